"""Every shipped Cacti template imports into a real Cacti 1.2 (Debian's, on a private MariaDB)
through its cli/import_template.php, with nothing in Cacti's log and every data source on the
stock Get SNMP Data with the OID the templates name."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, require_programs, require_root

TEMPLATES = REPO / "cacti_templates"
POLLED_OID = re.compile(r"<value>(\.1\.3\.6\.1\.4\.1\.[\d.]+)</value>")


@pytest.mark.slow
def test_every_template_imports_into_cacti() -> None:
    require_root("MariaDB and Cacti's files are run as root here")
    require_programs("mariadbd", "mariadb-install-db", "mariadb", "php")
    if not Path("/usr/share/cacti/cli/import_template.php").exists():
        pytest.skip("not installed: cacti (make deps installs it)")
    from lab.cacti import DATABASE, Cacti

    files = sorted(TEMPLATES.glob("cacti_*.xml"))
    graph_files = [f for f in files if f.name.startswith("cacti_graph_")]
    assert len(graph_files) >= 6 and (TEMPLATES / "cacti_host_postfix_mail_node.xml") in files
    with tempfile.TemporaryDirectory(prefix="mailpulse-cacti-") as tmp:
        cacti = Cacti(Path(tmp)).start()
        try:
            for f in files:
                r = cacti.import_template(f)
                assert r.returncode == 0, (f.name, r.stdout, r.stderr)
                assert "[success]" in r.stdout and "[fail]" not in r.stdout, (f.name, r.stdout)
                # import_template.php says success even when a row failed: Cacti's log tells.
                assert not re.search(r"ERROR|WARNING", cacti.log_text()), cacti.log_text()
            names = cacti.sql("SELECT name FROM graph_templates", DATABASE).split("\n")
            assert len([n for n in names if n.startswith("mailpulse - ")]) == len(graph_files)
            hosts = cacti.sql("SELECT name FROM host_template", DATABASE).split()
            assert "Postfix" in hosts
            linked = cacti.sql("SELECT COUNT(*) FROM host_template_graph", DATABASE)
            assert int(linked) == len(graph_files)
            # Every data template polls Get SNMP Data with one of the templates' OIDs.
            want = set()
            for f in files:
                want |= set(POLLED_OID.findall(f.read_text()))
            rows = cacti.sql(
                "SELECT dt.name, di.name, did.value FROM data_template dt"
                " JOIN data_template_data dtd ON dtd.data_template_id = dt.id"
                " JOIN data_input di ON di.id = dtd.data_input_id"
                " JOIN data_input_data did ON did.data_template_data_id = dtd.id"
                " JOIN data_input_fields dif ON dif.id = did.data_input_field_id"
                " WHERE dif.data_name = 'oid'",
                DATABASE,
            ).splitlines()
            templates = int(cacti.sql("SELECT COUNT(*) FROM data_template", DATABASE))
            assert len(rows) == templates == len(want)
            assert {r.split("\t")[1] for r in rows} == {"Get SNMP Data"}
            assert {r.split("\t")[2] for r in rows} == want
        finally:
            cacti.stop()


@pytest.mark.slow
def test_cacti_polls_a_node_through_snmpd_with_the_templates(tmp_path: Path) -> None:
    """A device on "Postfix mail node" gets its graphs, and Cacti's own poller (cmd.php, Get
    SNMP Data) reads through the real snmpd and the shipped snippet what the snapshot holds."""
    require_root("MariaDB and Cacti's files are run as root here")
    require_programs("mariadbd", "mariadb-install-db", "mariadb", "php", "snmpd")
    if not Path("/usr/share/cacti/cli/import_template.php").exists():
        pytest.skip("not installed: cacti (make deps installs it)")
    from mailpulse.exporters import snmp

    from lab.cacti import DATABASE, Cacti
    from lab.snmpd import COMMUNITY, Snmpd

    state = tmp_path / "state"
    state.mkdir()
    reading = {
        ("mailpulse_queue_messages", ("postfix", "deferred")): 42.0,
        ("mailpulse_deliveries_total", ("postfix", "sent", "", "gmail", "2xx")): 1000.0,
        ("mailpulse_host_load_average", ("1m",)): 1.5,
    }
    snmp.write_snapshot(state / "snapshot.json", snmp.snapshot_document(reading, {}, 3600))
    with tempfile.TemporaryDirectory(prefix="mailpulse-cacti-") as tmp:
        cacti = Cacti(Path(tmp)).start()
        snmpd = Snmpd(tmp_path / "snmpd", state).start()
        try:
            assert (
                cacti.import_template(TEMPLATES / "cacti_host_postfix_mail_node.xml").returncode
                == 0
            )
            template = cacti.sql("SELECT id FROM host_template", DATABASE).strip()
            r = cacti.php(
                "cli/add_device.php", "--description=node1", "--ip=127.0.0.1",
                f"--template={template}", "--version=2", f"--community={COMMUNITY}",
                f"--port={snmpd.port}", "--avail=none",
            )  # fmt: skip
            assert r.returncode == 0, r.stdout + r.stderr
            host = cacti.sql("SELECT id FROM host", DATABASE).strip()
            graphs = int(cacti.sql("SELECT COUNT(*) FROM graph_local", DATABASE))
            assert graphs == len(list(TEMPLATES.glob("cacti_graph_*.xml")))
            r = cacti.php("site/cmd.php", "--poller=1", f"--first={host}", f"--last={host}")
            assert r.returncode == 0, r.stdout + r.stderr
            rows = cacti.sql(
                "SELECT pi.arg1, po.output FROM poller_output po JOIN poller_item pi"
                " ON pi.local_data_id = po.local_data_id AND pi.rrd_name = po.rrd_name",
                DATABASE,
            ).splitlines()
            polled = dict(row.split("\t") for row in rows)
            root = ".1.3.6.1.4.1.32473.25"
            assert polled[f"{root}.3.2.1.3.4"] == "42"  # deferred queue
            assert polled[f"{root}.3.1.1.3.1"] == "1000"  # sent
            assert polled[f"{root}.3.7.1.3.1"] == "150"  # load 1m, hundredths
            want = {
                o: str(v) for o, _, v in json.loads((state / "snapshot.json").read_text())["oids"]
            }
            assert polled == {oid: want[oid] for oid in polled}
            assert set(polled) == set(
                POLLED_OID.findall((TEMPLATES / "cacti_host_postfix_mail_node.xml").read_text())
            )
            assert not re.search(r"ERROR|WARNING", cacti.log_text()), cacti.log_text()
        finally:
            snmpd.stop()
            cacti.stop()
