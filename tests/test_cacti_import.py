"""Every shipped Cacti template imports into a real Cacti 1.2 (Debian's, on a private MariaDB)
through its cli/import_template.php, with nothing in Cacti's log and every data source on the
stock Get SNMP Data with the OID the templates name."""

from __future__ import annotations

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
