"""Files coming into the API: the ingest roots, archive unpacking, attachment staging (no Ray)."""

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from deployments.problems import Problem
from deployments.uploads import UnpackError, allowed_path, copy_into, safe_name, stage_attachments, unpack
from troupe.settings import Settings


@pytest.fixture
def settings(tmp_path):
    root = tmp_path / "data"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.txt").write_text("alpha")
    return Settings(home=tmp_path / "home", ingest_roots=[str(root), "s3://bucket/reports"])


def refused(raw, settings, status):
    with pytest.raises(Problem) as info:
        allowed_path(raw, settings, "paths.0")
    assert info.value.status == status and info.value.errors[0]["field"] == "paths.0"
    return info.value.detail


def test_paths_inside_the_roots_are_allowed_and_resolved(settings, tmp_path):
    root = tmp_path / "data"
    assert allowed_path(str(root / "docs"), settings, "p") == str(root / "docs")
    assert allowed_path(f"{root}/docs/../docs/a.txt", settings, "p") == str(root / "docs" / "a.txt")
    assert allowed_path("s3://bucket/reports/q3", settings, "p") == "s3://bucket/reports/q3"


def test_paths_outside_the_roots_are_refused_with_the_fix(settings, tmp_path):
    assert "TROUPE_INGEST_ROOTS" in refused("/etc/passwd", settings, 403)
    assert "outside" in refused(str(tmp_path / "data" / ".." / "elsewhere"), settings, 403)
    assert "relative" in refused("docs/a.txt", settings, 422)
    assert "does not exist" in refused(str(tmp_path / "data" / "missing.pdf"), settings, 422)
    refused("s3://bucket/other", settings, 403)
    refused("s3://bucket/reports/../secrets", settings, 403)
    (tmp_path / "data" / "link").symlink_to("/etc")
    refused(str(tmp_path / "data" / "link" / "passwd"), settings, 403)  # a link cannot lead out


def test_troupe_own_state_is_never_readable(tmp_path):
    settings = Settings(home=tmp_path / ".troupe", ingest_roots=[str(tmp_path)])
    (tmp_path / ".troupe").mkdir()
    (tmp_path / ".troupe" / "troupe.db").write_text("x")
    assert "own state" in refused(str(tmp_path / ".troupe" / "troupe.db"), settings, 403)


def test_roots_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TROUPE_INGEST_ROOTS", f"{tmp_path}, s3://b/p")
    assert Settings().ingest_roots == [str(tmp_path), "s3://b/p"]
    monkeypatch.delenv("TROUPE_INGEST_ROOTS")
    assert Settings().ingest_roots == []  # uploads only, unless the operator names folders


def test_no_server_path_is_readable_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("TROUPE_INGEST_ROOTS", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    settings = Settings(home=tmp_path / ".troupe")
    for raw in (str(tmp_path / "notes.txt"), str(Path.home()), "/etc/passwd", "s3://bucket/x"):
        detail = refused(raw, settings, 403)
        assert "TROUPE_INGEST_ROOTS is not set" in detail and "upload the files instead" in detail


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_archives_unpack_with_their_folders(tmp_path):
    archive = tmp_path / "in.zip"
    archive.write_bytes(_zip({"docs/a.txt": b"alpha", "b.md": b"# beta"}))
    assert unpack(archive, tmp_path / "out", 1000) == 2
    assert (tmp_path / "out" / "docs" / "a.txt").read_text() == "alpha"
    tgz = tmp_path / "in.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(tmp_path / "out" / "docs" / "a.txt", arcname="x/a.txt")
        link = tarfile.TarInfo("x/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    assert unpack(tgz, tmp_path / "out2", 1000) == 1  # the link is not unpacked
    assert not (tmp_path / "out2" / "x" / "link").exists()


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt"])
def test_archive_members_cannot_escape(tmp_path, name):
    archive = tmp_path / "in.zip"
    archive.write_bytes(_zip({name: b"x"}))
    with pytest.raises(UnpackError, match="leads outside"):
        unpack(archive, tmp_path / "out", 1000)
    assert not (tmp_path / "evil.txt").exists()


def test_archives_are_capped_and_garbage_is_refused(tmp_path):
    archive = tmp_path / "in.zip"
    archive.write_bytes(_zip({"big.txt": b"0" * 5000}))
    with pytest.raises(UnpackError, match="more than 1000 bytes"):
        unpack(archive, tmp_path / "out", 1000)
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(UnpackError, match="not a zip or tar"):
        unpack(junk, tmp_path / "out", 1000)


def test_safe_names():
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name(".hidden") == "hidden"
    assert safe_name("C:\\Users\\me\\report q3.pdf") == "report q3.pdf"
    assert safe_name("") == "upload"


async def test_copy_into_keeps_names_apart(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("1")
    (src / "sub" / "a.txt").write_text("2")
    (src / ".secret").write_text("3")
    dest = tmp_path / "dest"
    copied = await copy_into(str(src), dest, 1000)
    assert sorted(p.name for p in copied) == ["a.txt", "sub-a.txt"]
    again = await copy_into(str(src / "a.txt"), dest, 1000)
    assert again[0].name == "a-1.txt"
    with pytest.raises(Problem) as info:
        await copy_into(str(src), dest, 1)
    assert info.value.status == 413


async def test_refused_attachments_leave_no_workspace_behind(settings, tmp_path):
    workspace = settings.workspace("acme", "task-1")
    assert workspace.stat().st_mode & 0o777 == 0o700 and workspace.parent.stat().st_mode & 0o777 == 0o700
    with pytest.raises(Problem):
        await stage_attachments(workspace, ["/etc/passwd"], [], settings=settings, max_bytes=1 << 20)
    assert not workspace.exists()
    workspace = settings.workspace("acme", "task-2")
    staged = await stage_attachments(workspace, [str(tmp_path / "data" / "docs")], [], settings=settings,
                                     max_bytes=1 << 20)
    assert staged == ["attachments/a.txt"] and (workspace / staged[0]).read_text() == "alpha"


def test_tenant_and_task_names_cannot_lead_out_of_the_home(settings):
    for tenant, task in (("..", "t"), ("a/b", "t"), ("acme", "../../x"), ("", "t"), (".hidden", "t")):
        with pytest.raises(ValueError, match="cannot name a folder"):
            settings.workspace(tenant, task)
    with pytest.raises(ValueError, match="cannot name a folder"):
        settings.tenant_uploads("../acme")
    assert not (settings.home / "x").exists()
