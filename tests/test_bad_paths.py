"""Bad paths: every ltexec path argument given a file, a missing directory or one that cannot be written
ends with exit status 2 and one line naming the argument and the path, never a traceback."""

import os

import pytest

from ltexec.cli import main
from ltexec.validation import check_output_dir


@pytest.fixture
def paths(tmp_path):
    """``file``: a regular file; ``missing``: a path that does not exist; ``dir``: an empty directory."""
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "dir").mkdir()
    return {"file": tmp_path / "a-file", "missing": tmp_path / "missing", "dir": tmp_path / "dir"}


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize("argv, message", [
    (["train", "--out", "{file}"], "--out {file} is a file, not a directory"),
    (["train", "--out", "{file}/run"], "--out {file}/run cannot be created: {file} is a file, not a directory"),
    (["train", "--out", "{file}", "--resume"], "--out {file} is a file, not a directory"),
    (["train", "--out", "{missing}", "--resume"], "no checkpoint at {missing}/checkpoint.npz"),
    (["train", "--out", "{dir}", "--resume"], "no checkpoint at {dir}/checkpoint.npz"),
    (["train", "--resume"], "--resume needs --out, the directory of the run to continue"),
    (["sweep", "--out", "{file}", "--task", "addition", "--lengths", "1"], "--out {file} is a file, not a directory"),
    (["sweep", "--out", "{file}/sweep"], "--out {file}/sweep cannot be created: {file} is a file, not a directory"),
    (["sweep", "--out", "{missing}"], "{missing} is not a sweep directory (no sweep.json)"),
    (["sweep", "--out", "{dir}"], "{dir} is not a sweep directory (no sweep.json)"),
    (["plot", "{file}"], "{file} is not a sweep directory (no sweep.json)"),
    (["plot", "{missing}", "--figures", "{file}"], "--figures {file} is a file, not a directory"),
])
def test_a_bad_path_ends_with_exit_2_and_one_line(argv, message, paths, capsys):
    code, err = run_cli([arg.format(**paths) for arg in argv], capsys)
    assert code == 2
    assert err == f"ltexec {argv[0]}: error: {message.format(**paths)}\n"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs file permissions that bind this user")
@pytest.mark.parametrize("argv, message", [
    (["train", "--out", "{dir}/run"], "--out {dir}/run cannot be created: {dir} is not writable"),
    (["train", "--out", "{dir}", "--resume"], "--out {dir} is not writable"),
    (["sweep", "--out", "{dir}", "--task", "addition", "--lengths", "1"], "--out {dir} is not writable"),
])
def test_a_directory_that_cannot_be_written_ends_with_exit_2_and_one_line(argv, message, paths, capsys):
    paths["dir"].chmod(0o500)
    try:
        code, err = run_cli([arg.format(**paths) for arg in argv], capsys)
    finally:
        paths["dir"].chmod(0o700)
    assert code == 2
    assert err == f"ltexec {argv[0]}: error: {message.format(**paths)}\n"


def test_check_output_dir_accepts_what_can_be_written_and_names_what_cannot(paths, monkeypatch):
    assert check_output_dir("out", paths["dir"]) == paths["dir"]
    assert check_output_dir("out", str(paths["missing"] / "a" / "b")) == paths["missing"] / "a" / "b"
    with pytest.raises(ValueError, match="^out .*a-file is a file, not a directory$"):
        check_output_dir("out", paths["file"])
    with pytest.raises(ValueError, match="^out .*/dev/null/x cannot be created: /dev/null is not a directory$"):
        check_output_dir("out", "/dev/null/x")
    monkeypatch.setattr(os, "access", lambda path, mode: False)     # as a user without write permission sees it
    with pytest.raises(ValueError, match="^out .*dir is not writable$"):
        check_output_dir("out", paths["dir"])
    with pytest.raises(ValueError) as error:
        check_output_dir("out", paths["missing"] / "run")
    assert str(error.value) == f"out {paths['missing']}/run cannot be created: {paths['dir'].parent} is not writable"
