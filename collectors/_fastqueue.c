/* The spool reader's batch of small reads, and the envelope of a queue file held in memory, in C: for each name in one directory, open it
 * (relative to the directory, so the kernel walks one path component), fstat it and read its
 * first bytes, all without holding the GIL, so that a second thread can read the next batch
 * while Python parses this one. collectors/spoolread.py holds the pure-Python twin and says
 * what the tuples mean; tests/test_spoolread.py checks that both give the same answers. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    int err;
    mode_t mode;
    long long ctime_ns;
    long long mtime;
    char *data; /* NULL unless a regular file was read */
    Py_ssize_t len;
} head_t;

static void read_one(int dirfd, const char *name, int flags, Py_ssize_t size, head_t *h) {
    struct stat st;
    int fd = openat(dirfd, name, flags);
    if (fd < 0) {
        h->err = errno;
        return;
    }
    if (fstat(fd, &st) < 0) {
        h->err = errno;
        close(fd);
        return;
    }
    h->mode = st.st_mode;
    h->ctime_ns = (long long)st.st_ctim.tv_sec * 1000000000LL + st.st_ctim.tv_nsec;
    h->mtime = (long long)st.st_mtim.tv_sec;
    if (S_ISREG(st.st_mode)) {
        h->data = malloc(size > 0 ? (size_t)size : 1);
        if (h->data == NULL) {
            h->err = ENOMEM;
        } else {
            ssize_t n = pread(fd, h->data, (size_t)size, 0);
            if (n < 0)
                h->err = errno;
            else
                h->len = n;
        }
    }
    close(fd);
}

static PyObject *read_heads(PyObject *self, PyObject *args) {
    const char *dir;
    PyObject *names;
    int flags;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "yO!in", &dir, &PyList_Type, &names, &flags, &size))
        return NULL;
    if (size < 0 || size > (1 << 24)) {
        PyErr_SetString(PyExc_ValueError, "size out of range");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(names);
    PyObject *encoded = PyList_New(count);
    head_t *heads = calloc(count ? (size_t)count : 1, sizeof(head_t));
    const char **paths = calloc(count ? (size_t)count : 1, sizeof(char *));
    PyObject *out = NULL;
    if (encoded == NULL || heads == NULL || paths == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *b = PyUnicode_EncodeFSDefault(PyList_GET_ITEM(names, i));
        if (b == NULL)
            goto done;
        PyList_SET_ITEM(encoded, i, b);
        paths[i] = PyBytes_AS_STRING(b);
    }
    int dirfd_err = 0;
    Py_BEGIN_ALLOW_THREADS
    int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) {
        dirfd_err = errno;
    } else {
        for (Py_ssize_t i = 0; i < count; i++)
            read_one(dirfd, paths[i], flags | O_CLOEXEC, size, &heads[i]);
        close(dirfd);
    }
    Py_END_ALLOW_THREADS
    if (dirfd_err) {
        errno = dirfd_err;
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, dir);
        goto done;
    }
    out = PyList_New(count);
    if (out == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        head_t *h = &heads[i];
        PyObject *item;
        if (h->err)
            item = Py_BuildValue("(iiLLO)", h->err, 0, 0LL, 0LL, Py_None);
        else if (h->data == NULL)
            item = Py_BuildValue("(iiLLO)", 0, (int)h->mode, h->ctime_ns, h->mtime, Py_None);
        else
            item = Py_BuildValue("(iiLLy#)", 0, (int)h->mode, h->ctime_ns, h->mtime, h->data,
                                 h->len);
        if (item == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, item);
    }
done:
    if (heads != NULL)
        for (Py_ssize_t i = 0; i < count; i++)
            free(heads[i].data);
    free(heads);
    free(paths);
    Py_XDECREF(encoded);
    return out;
}

/* The first whitespace-separated field of a record as a number, as qfile._int_field takes it;
 * -1 when it is not one (the Python parser then says why). */
static long long int_field(const unsigned char *s, Py_ssize_t len) {
    Py_ssize_t i = 0, digits = 0;
    long long v = 0;
    while (i < len && (s[i] == ' ' || (s[i] >= '\t' && s[i] <= '\r')))
        i++;
    for (; i < len && !(s[i] == ' ' || (s[i] >= '\t' && s[i] <= '\r')); i++, digits++) {
        if (s[i] < '0' || s[i] > '9' || digits >= 18)
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return digits ? v : -1;
}

/* envelope(data) -> (arrival or None, sender, [recipients], content size or None), or None
 * whenever anything is out of the ordinary (a record cut by the end of data, a pointer to
 * follow, an unknown record, a bad number, no sender): qfile.parse_queue_file then reads the
 * file and says what it holds. Where it answers, it answers what parse_queue_file does. */
static PyObject *envelope(PyObject *self, PyObject *arg) {
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "envelope() takes bytes");
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(arg);
    Py_ssize_t n = PyBytes_GET_SIZE(arg), pos = 0;
    long long arrival = -1, size = -1;
    PyObject *sender = NULL, *recipients = PyList_New(0);
    if (recipients == NULL)
        return NULL;
    while (pos < n) {
        unsigned char type = buf[pos];
        Py_ssize_t length = 0, i = pos + 1;
        int shift = 0, done = 0;
        for (; i < pos + 6 && i < n; i++, shift += 7) {
            length |= (Py_ssize_t)(buf[i] & 0x7F) << shift;
            if (!(buf[i] & 0x80)) {
                done = 1;
                i++;
                break;
            }
        }
        if (!done || length > (1 << 24))
            break;
        Py_ssize_t end = i + length;
        if (end > n)
            break;
        const unsigned char *payload = buf + i;
        if (type == 'A') {
        } else if (type == 'R') {
            PyObject *r = PyUnicode_DecodeUTF8((const char *)payload, length, "surrogateescape");
            if (r == NULL || PyList_Append(recipients, r) < 0) {
                Py_XDECREF(r);
                goto fail;
            }
            Py_DECREF(r);
        } else if (type == 'E') {
            if (sender == NULL)
                break;
            PyObject *a = arrival < 0 ? Py_NewRef(Py_None) : PyLong_FromLongLong(arrival);
            PyObject *z = size < 0 ? Py_NewRef(Py_None) : PyLong_FromLongLong(size);
            PyObject *out = (a && z) ? PyTuple_Pack(4, a, sender, recipients, z) : NULL;
            Py_XDECREF(a);
            Py_XDECREF(z);
            Py_DECREF(sender);
            Py_DECREF(recipients);
            return out;
        } else if (type == 'S') {
            if (sender == NULL) {
                sender = PyUnicode_DecodeUTF8((const char *)payload, length, "surrogateescape");
                if (sender == NULL)
                    goto fail;
            }
        } else if (type == 'T' || type == 'C') {
            long long *field = type == 'T' ? &arrival : &size;
            if (*field < 0 && (*field = int_field(payload, length)) < 0)
                break;
        } else if (type == 'M') {
            if (size >= 0)
                end += size;
        } else if (type == 'p') {
            long long target = int_field(payload, length);
            if (target != 0)
                break;
        } else if (!memchr("CTcFILSDRO/WAK>fdMLNwXrePpV<ionmE", type, 33)) {
            break;
        }
        pos = end;
    }
    Py_XDECREF(sender);
    Py_DECREF(recipients);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(sender);
    Py_DECREF(recipients);
    return NULL;
}

static PyMethodDef methods[] = {
    {"envelope", envelope, METH_O,
     "envelope(data: bytes) -> (arrival or None, sender, recipients, size or None) or None"},
    {"read_heads", read_heads, METH_VARARGS,
     "read_heads(directory: bytes, names: list[str], flags: int, size: int) -> list of "
     "(errno, st_mode, st_ctime_ns, mtime seconds, first size bytes or None)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastqueue", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastqueue(void) { return PyModule_Create(&module); }
