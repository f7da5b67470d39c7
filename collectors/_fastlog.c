/* Postfix log lines -> the fields of their seven common shapes, a block of lines at a time.
 *
 * scan(block: bytes, max_line: int[, end: int]) -> list, one item per line of block[:end]:
 * the same items as collectors/scanner.py, its pure-Python twin, whose docstring says what
 * each kind carries. The kinds are exported as constants (OTHER, DELIVERY, ...) with the
 * values of scanner.LineKind; tests hold the two scanners equal item for item, and both to
 * the general parser (logparse.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum kind { OTHER, DELIVERY, QUEUED, REMOVED, MESSAGE_ID, CLIENT, NOTIFICATION, EXPIRED };
static const char *const kind_names[] = {"OTHER",      "DELIVERY", "QUEUED",       "REMOVED",
                                         "MESSAGE_ID", "CLIENT",   "NOTIFICATION", "EXPIRED"};

typedef const unsigned char *P;

static int starts(P s, P e, const char *lit, Py_ssize_t n) {
    return e - s >= n && memcmp(s, lit, n) == 0;
}

/* a run of chars outside "<>,\n" ("," stops every field: Postfix separates them with ", ") */
static P field(P s, P e) {
    while (s < e && *s != '<' && *s != '>' && *s != ',') s++;
    return s;
}

static P digits(P s, P e) {
    while (s < e && *s >= '0' && *s <= '9') s++;
    return s;
}

static int is_hex(unsigned char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'); }

static int is_long_qid(unsigned char c) {
    /* digits and letters without vowels (enable_long_queue_ids) */
    if (c >= '0' && c <= '9') return 1;
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')) {
        switch (c | 0x20) {
        case 'a': case 'e': case 'i': case 'o': case 'u': return 0;
        default: return 1;
        }
    }
    return 0;
}

static int is_space(unsigned char c) {
    /* what \s matches in a str pattern, within ASCII */
    return c == ' ' || (c >= 9 && c <= 13) || (c >= 28 && c <= 31);
}

/* lines reach the fields only when they are plain ASCII: the bytes are the characters */
static PyObject *str(P s, P e) {
    PyObject *u = PyUnicode_New(e - s, 127);
    if (u) memcpy(PyUnicode_DATA(u), s, e - s);
    return u;
}

/* Recent values of the fields that recur (header, queue id, relay, dsn, status, delay,
 * delays), by their bytes: one object serves every line that has them, and str keeps its hash,
 * so the caller's dict lookups need not hash them again. Direct-mapped; a miss replaces.
 * An entry is found by its tag and its bytes together: the tag names the field, hence what
 * the bytes were made into ("250" is a str as a reply code, a float as a delay). */
#define KEPT 4096
#define KEPT_LEN 96
#define TAGS 16
static struct kept {
    Py_ssize_t id; /* length * TAGS + tag */
    PyObject *value;
    unsigned char key[KEPT_LEN];
} kept[KEPT];

typedef PyObject *(*make_fn)(P, P);

static PyObject *recurring(int tag, P s, P e, make_fn make) {
    Py_ssize_t n = e - s, id = n * TAGS + tag;
    if (n > KEPT_LEN) return make(s, e);
    /* a multiply-xorshift hash, eight bytes a step: a collision costs only a miss; the tag in
     * the low bits, which the multiplications carry up to the bits of the slot */
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)id, w;
    P c = s;
    for (; e - c >= 8; c += 8) {
        memcpy(&w, c, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdULL;
        h ^= h >> 29;
    }
    w = 0;
    memcpy(&w, c, e - c);
    h = (h ^ w) * 0xff51afd7ed558ccdULL;
    struct kept *k = &kept[(h ^ (h >> 32)) & (KEPT - 1)];
    if (k->value && k->id == id && memcmp(k->key, s, n) == 0) {
        Py_INCREF(k->value);
        return k->value;
    }
    PyObject *v = make(s, e);
    if (!v) return NULL;
    Py_XSETREF(k->value, Py_NewRef(v));
    k->id = id;
    memcpy(k->key, s, n);
    return v;
}

static PyObject *lower_str(P s, P e) {
    PyObject *u = PyUnicode_New(e - s, 127);
    if (u) {
        unsigned char *d = PyUnicode_DATA(u);
        for (; s < e; s++) *d++ = (*s >= 'A' && *s <= 'Z') ? *s + 32 : *s;
    }
    return u;
}

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static int is_word(unsigned char c) {
    return is_digit(c) || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

/* logparse.reply_codes over an ASCII reply: *code at its 3-digit reply code (NULL: none),
 * [*dsn, *dsn_e) its enhanced code (empty: none). The code is at the start, or after
 * " said: " or "talk to me: "; the enhanced code follows it after " " or "-" and ends at a
 * non-word character, each of its numbers one to three digits. */
static void reply_codes(P s, P e, P *code, P *dsn, P *dsn_e) {
    *code = NULL;
    *dsn = *dsn_e = e;
    P c = s;
    if (!(e - s >= 3 && is_digit(s[0]) && is_digit(s[1]) && is_digit(s[2]))) {
        c = memmem(s, e - s, " said: ", 7);
        if (c) {
            c += 7;
        } else {
            c = memmem(s, e - s, "talk to me: ", 12);
            if (!c) return;
            c += 12;
        }
    }
    if (!(e - c >= 3 && (*c == '2' || *c == '4' || *c == '5') && is_digit(c[1]) && is_digit(c[2])))
        return;
    *code = c;
    P d = c + 3;
    if (!(e - d >= 3 && (*d == ' ' || *d == '-') && (d[1] == '2' || d[1] == '4' || d[1] == '5')
          && d[2] == '.'))
        return;
    P x = d + 3, y = digits(x, e);
    if (y == x || y - x > 3 || y == e || *y != '.') return;
    P z = digits(y + 1, e);
    if (z == y + 1 || z - (y + 1) > 3 || (z < e && is_word(*z))) return;
    *dsn = d + 1;
    *dsn_e = z;
}

/* float(text) as Python reads it, or NULL with ValueError set */
static PyObject *to_float(P s, P e) {
    /* plain "12.345", as Postfix writes them: read in place */
    P d = digits(s, e);
    if (d > s && d - s < 30 && (d == e || (*d == '.' && digits(d + 1, e) == e && d + 1 < e))) {
        char buf[64];
        if (e - s < (Py_ssize_t)sizeof buf) {
            memcpy(buf, s, e - s);
            buf[e - s] = 0;
            double v = PyOS_string_to_double(buf, NULL, NULL);
            if (v == -1.0 && PyErr_Occurred()) return NULL;
            return PyFloat_FromDouble(v);
        }
    }
    PyObject *t = str(s, e);
    if (!t) return NULL;
    PyObject *f = PyFloat_FromString(t);
    Py_DECREF(t);
    return f;
}

/* delay=: its float, 0.0 when it is empty or not a number (as logparse.delay_of) */
static PyObject *delay_of(P s, P e) {
    PyObject *f = s < e ? to_float(s, e) : NULL;
    if (!f && s < e) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError)) return NULL;
        PyErr_Clear();
    }
    return f ? f : PyFloat_FromDouble(0.0);
}

/* delays=a/b/c/d: a tuple of four floats, None when it is not that (as logparse.delays_of) */
static PyObject *delays_of(P s, P e) {
    PyObject *t = PyTuple_New(4);
    if (!t) return NULL;
    for (int i = 0; i < 4; i++) {
        P x = memchr(s, '/', e - s);
        if (!x) x = e;
        if ((i < 3) != (x < e)) goto none; /* not exactly four parts */
        PyObject *f = to_float(s, x);
        if (!f) {
            if (!PyErr_ExceptionMatches(PyExc_ValueError)) {
                Py_DECREF(t);
                return NULL;
            }
            PyErr_Clear();
            goto none;
        }
        PyTuple_SET_ITEM(t, i, f);
        s = x + 1;
    }
    PyObject_GC_UnTrack(t); /* floats only: the collector need not look at it */
    return t;
none:
    Py_DECREF(t);
    Py_RETURN_NONE;
}

static PyObject *number(P s, P e) {
    if (e - s > 18) return NULL;
    long long v = 0;
    for (; s < e; s++) v = v * 10 + (*s - '0');
    return PyLong_FromLongLong(v);
}

/* a tuple of kind, start, end and the given fields (new references, stolen) */
static PyObject *item(int kind, Py_ssize_t a, Py_ssize_t b, int n, PyObject **fields) {
    PyObject *t = PyTuple_New(3 + n);
    if (!t) goto fail;
    PyTuple_SET_ITEM(t, 0, PyLong_FromLong(kind));
    PyTuple_SET_ITEM(t, 1, PyLong_FromSsize_t(a));
    PyTuple_SET_ITEM(t, 2, PyLong_FromSsize_t(b));
    for (int i = 0; i < n; i++) {
        if (!fields[i]) {
            Py_DECREF(t);
            t = NULL;
            goto fail;
        }
        PyTuple_SET_ITEM(t, 3 + i, fields[i]);
        fields[i] = NULL;
    }
    if (PyErr_Occurred()) {
        Py_DECREF(t);
        return NULL;
    }
    /* only str and int inside: no cycle can pass through it, the collector may skip it */
    PyObject_GC_UnTrack(t);
    return t;
fail:
    for (int i = 0; i < n; i++) Py_XDECREF(fields[i]);
    return NULL;
}

/* The remote's codes, as logparse.delivery_codes reads them from the reply [rp, rp_e) and the
 * logged dsn [dn, dn_e): out[0] the dsn, with Postfix's X.0.0 replaced by the remote's own
 * enhanced code, out[1] the reply code, out[2] the logged dsn when it was replaced, else None */
static void remote_codes(P rp, P rp_e, P dn, P dn_e, PyObject **out) {
    P code, rdsn, rdsn_e;
    reply_codes(rp, rp_e, &code, &rdsn, &rdsn_e);
    Py_ssize_t rl_n = rp_e - rp, dl_n = dn_e - dn;
    int usual = rl_n >= 4 && (*rp == '2' || *rp == '4' || *rp == '5') && is_digit(rp[1])
                && is_digit(rp[2]) && (rp[3] == ' ' || rp[3] == '-');
    /* no dsn= at all (Postfix before 2.3) is as unsure as X.0.0 */
    int unsure = dl_n == 0
                 || (dl_n >= 4 && memcmp(dn_e - 4, ".0.0", 4) == 0
                     && !(usual && rl_n >= 4 + dl_n && memcmp(rp + 4, dn, dl_n) == 0
                          && !(rl_n > 4 + dl_n && is_digit(rp[4 + dl_n]))));
    out[1] = code ? recurring(9, code, code + 3, str) : str(rp, rp);
    if (unsure && rdsn < rdsn_e && !(rdsn_e - rdsn == dl_n && memcmp(rdsn, dn, dl_n) == 0)) {
        out[0] = recurring(5, rdsn, rdsn_e, str);
        out[2] = dl_n ? recurring(5, dn, dn_e, str) : Py_NewRef(Py_None);
    } else {
        out[0] = recurring(5, dn, dn_e, str);
        out[2] = Py_NewRef(Py_None);
    }
}

/* "to=<...>, ..., status=... (reply)" at [r, e) -> DELIVERY with out[0..10] set (to, orig_to,
 * relay, delay, delays, dsn, status, reply, domain, reply_code, logged_dsn), else OTHER */
static int delivery(P r, P e, PyObject **out) {
    P p = r + 4, x;
    P to = p, to_e = field(p, e);
    if (!starts(to_e, e, ">, ", 3)) return OTHER;
    p = to_e + 3;
    P ot = p, ot_e = p;
    if (starts(p, e, "orig_to=", 8)) {
        p += 8;
        int bracket = p < e && *p == '<';
        ot = p + bracket;
        ot_e = field(ot, e);
        if (bracket ? !starts(ot_e, e, ">, ", 3) : !starts(ot_e, e, ", ", 2)) return OTHER;
        p = ot_e + 2 + bracket;
    }
    if (!starts(p, e, "relay=", 6)) return OTHER;
    P rl = p + 6, rl_e = field(rl, e);
    if (!starts(rl_e, e, ", ", 2)) return OTHER;
    p = rl_e + 2;
    if (starts(p, e, "conn_use=", 9)) {
        x = digits(p + 9, e);
        if (x == p + 9 || !starts(x, e, ", ", 2)) return OTHER;
        p = x + 2;
    }
    if (!starts(p, e, "delay=", 6)) return OTHER;
    P dl = p + 6, dl_e = field(dl, e);
    if (!starts(dl_e, e, ", delays=", 9)) return OTHER;
    P ds = dl_e + 9, ds_e = field(ds, e);
    if (!starts(ds_e, e, ", dsn=", 6)) return OTHER;
    P dn = ds_e + 6, dn_e = field(dn, e);
    if (!starts(dn_e, e, ", status=", 9)) return OTHER;
    P st = dn_e + 9, st_e = st;
    while (st_e < e && *st_e != ' ') st_e++;
    Py_ssize_t sl = st_e - st;
    if (!((sl == 4 && memcmp(st, "sent", 4) == 0) || (sl == 8 && memcmp(st, "deferred", 8) == 0)
          || (sl == 7 && memcmp(st, "bounced", 7) == 0)
          || (sl == 7 && memcmp(st, "expired", 7) == 0)))
        return OTHER;
    P rp = st_e < e ? st_e + 1 : e, rp_e = e;
    if (rp_e - rp >= 2 && *rp == '(' && rp_e[-1] == ')') rp++, rp_e--;
    out[0] = str(to, to_e);
    out[1] = str(ot, ot_e);
    out[2] = recurring(2, rl, rl_e, str);
    out[3] = recurring(3, dl, dl_e, delay_of);
    out[4] = recurring(4, ds, ds_e, delays_of);
    out[6] = recurring(6, st, st_e, str);
    out[7] = str(rp, rp_e);
    /* the recipient's domain (as scanner.py: rpartition("@"), lower) */
    P at = to_e;
    while (at > to && at[-1] != '@') at--;
    out[8] = recurring(8, at, to_e, lower_str);
    PyObject *codes[3];
    remote_codes(rp, rp_e, dn, dn_e, codes);
    out[5] = codes[0], out[9] = codes[1], out[10] = codes[2];
    return DELIVERY;
}

/* "from=<...>, ..." at [r, e) -> QUEUED (out[0..2]: sender, size, nrcpt), EXPIRED (out[0]:
 * sender) or OTHER */
static int from(P r, P e, PyObject **out) {
    P sd = r + 6, sd_e = sd;
    while (sd_e < e && *sd_e != '<' && *sd_e != '>' && *sd_e != ',' && *sd_e != ' ') sd_e++;
    if (starts(sd_e, e, ">, status=expired", 17)) {
        out[0] = str(sd, sd_e);
        return EXPIRED;
    }
    if (!starts(sd_e, e, ">, size=", 8)) return OTHER;
    P sz = sd_e + 8, sz_e = digits(sz, e);
    if (sz_e == sz || !starts(sz_e, e, ", nrcpt=", 8)) return OTHER;
    P nr = sz_e + 8, nr_e = digits(nr, e);
    if (nr_e == nr || e - nr_e != 15 || memcmp(nr_e, " (queue active)", 15) != 0) return OTHER;
    out[1] = number(sz, sz_e);
    out[2] = number(nr, nr_e);
    if (!out[1] || !out[2]) { /* past 18 digits: no size (the general parser says None) */
        Py_CLEAR(out[1]);
        Py_CLEAR(out[2]);
        return OTHER;
    }
    out[0] = str(sd, sd_e);
    return QUEUED;
}

/* "client=host[ip]" at [r, e) -> CLIENT (out[0]: ip) or OTHER */
static int client(P r, P e, PyObject **out) {
    P c = r + 7;
    while (c < e && *c != '[' && *c != ',' && !is_space(*c)) c++;
    if (!(c < e && *c == '[')) return OTHER;
    P ip = c + 1, ip_e = ip;
    while (ip_e < e && *ip_e != ']' && *ip_e != ',') ip_e++;
    /* a later "client_ip=" field is what the general parser would keep */
    if (!(ip_e < e && *ip_e == ']' && !memmem(ip_e, e - ip_e, "client_ip=", 10))) return OTHER;
    out[0] = recurring(7, ip, ip_e, str);
    return CLIENT;
}

/* a notice from bounce: " notification: " anywhere in [r, e) */
static int notification(P r, P e) {
    static const char note[] = " notification: ";
    for (P c = r; e - c >= 15; c++) {
        c = memchr(c, ' ', e - c);
        if (!c || e - c < 15) break;
        if (memcmp(c, note, 15) == 0) return 1;
    }
    return 0;
}

/* fields after the prefix and queue id, per kind */
static const int extra_fields[] = {0, 11, 3, 0, 1, 1, 0, 1};

/* One line [s, e) of the block starting at base -> its item, or NULL with an error set. */
static PyObject *line_item(P base, P s, P e, Py_ssize_t max_line, int plain) {
    Py_ssize_t a = s - base, b = e - base;
    PyObject *f[13] = {0};
    if (e - s > max_line) return item(OTHER, a, b, 0, f);
    if (!plain)
        for (P c = s; c < e; c++)
            if (*c == 0 || *c == '\r' || *c >= 0x80) return item(OTHER, a, b, 0, f);
    /* the header ends at the first "]", which must be followed by ": " */
    P pre = memchr(s, ']', e - s);
    if (!pre || !starts(pre + 1, e, ": ", 2)) return item(OTHER, a, b, 0, f);
    P q = pre + 3, qe = q;
    while (qe < e && is_hex(*qe) && qe - q < 25) qe++;
    if (!(qe - q >= 5 && qe - q <= 24 && starts(qe, e, ": ", 2))) {
        qe = q;
        while (qe < e && is_long_qid(*qe) && qe - q < 25) qe++;
        if (!(qe - q >= 10 && qe - q <= 24 && starts(qe, e, ": ", 2)))
            return item(OTHER, a, b, 0, f);
    }
    P r = qe + 2;
    int kind = OTHER;
    if (starts(r, e, "to=<", 4)) {
        kind = delivery(r, e, f + 2);
    } else if (starts(r, e, "from=<", 6)) {
        kind = from(r, e, f + 2);
    } else if (e - r == 7 && memcmp(r, "removed", 7) == 0) {
        kind = REMOVED;
    } else if (starts(r, e, "message-id=", 11)) {
        P m = r + 11, m_e = e;
        /* the id without its angle brackets, as the general parser keeps it */
        if (m_e - m >= 2 && *m == '<' && m_e[-1] == '>') m++, m_e--;
        f[2] = str(m, m_e);
        kind = MESSAGE_ID;
    } else if (starts(r, e, "client=", 7)) {
        kind = client(r, e, f + 2);
    }
    if (!kind && notification(r, e)) kind = NOTIFICATION;
    if (!kind) return item(OTHER, a, b, 0, f);
    f[0] = recurring(0, s, pre + 1, str);
    f[1] = recurring(1, q, qe, str);
    return item(kind, a, b, 2 + extra_fields[kind], f);
}

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t max_line, n = -1;
    if (!PyArg_ParseTuple(args, "y*n|n", &buf, &max_line, &n)) return NULL;
    if (n < 0 || n > buf.len) n = buf.len;
    PyObject *out = PyList_New(0);
    P base = buf.buf, s = base, end = base + n;
    /* usually the whole block is plain ASCII: then no line needs looking at byte by byte */
    uint64_t high = 0, word;
    P c = base;
    for (; end - c >= 8; c += 8) {
        memcpy(&word, c, 8);
        high |= word;
    }
    for (; c < end; c++) high |= *c;
    int plain = !(high & 0x8080808080808080ULL) && !memchr(base, 0, n) && !memchr(base, '\r', n);
    while (out) {
        P e = memchr(s, '\n', end - s);
        if (!e) e = end;
        PyObject *it = line_item(base, s, e, max_line, plain);
        if (!it || PyList_Append(out, it) < 0) {
            Py_XDECREF(it);
            Py_CLEAR(out);
            break;
        }
        Py_DECREF(it);
        if (e == end) break;
        s = e + 1;
    }
    PyBuffer_Release(&buf);
    return out;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(block, max_line[, end]) -> one item per line of block[:end] (see the source)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastlog", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastlog(void) {
    PyObject *m = PyModule_Create(&module);
    for (int k = OTHER; m && k <= EXPIRED; k++)
        if (PyModule_AddIntConstant(m, kind_names[k], k) < 0) Py_CLEAR(m);
    return m;
}
