"""The command-line conventions: one-line errors and their exit codes, intermixed parsing."""
import pytest

from detector.cli import ArgumentParser, guarded, one_line, positive_int
from detector.errors import CheckpointWriteError, InputError


def test_user_and_run_errors_are_one_line_with_their_exit_code_and_bugs_keep_their_traceback(capsys):
    def fail(error):
        raise error

    assert guarded(fail, InputError("data.split_file: split file not found: x.txt")) == 2
    assert capsys.readouterr().err == "error: data.split_file: split file not found: x.txt\n"
    assert guarded(fail, CheckpointWriteError("cannot write checkpoint c.pth: No space left on device")) == 1
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(KeyError):
        guarded(fail, KeyError("a bug"))


def test_an_error_from_a_data_loader_worker_keeps_only_its_message():
    wrapped = InputError("Caught ImageReadError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                         "last):\n  File \"x.py\", line 1, in f\nImageReadError: img.png: corrupt or truncated image\n")
    assert one_line(wrapped) == "img.png: corrupt or truncated image"
    assert one_line(InputError("two\nlines")) == "two lines"


def test_argparse_mistakes_are_one_line_and_options_mix_with_overrides(capsys):
    p = ArgumentParser(prog="tool")
    p.add_argument("--flag", action="store_true")
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument("overrides", nargs="*")
    args = p.parse(["a=1", "--flag", "b=2"])
    assert args.flag and args.overrides == ["a=1", "b=2"]
    with pytest.raises(SystemExit) as e:
        p.parse(["--batch-size", "0"])
    assert e.value.code == 2
    assert capsys.readouterr().err == "tool: error: argument --batch-size: must be >= 1, got 0 (see --help)\n"


def test_a_disk_that_refuses_a_write_is_one_line_and_exit_1_other_os_errors_are_bugs(capsys):
    import errno

    def full_disk():
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/a/metrics.jsonl")

    assert guarded(full_disk) == 1
    assert capsys.readouterr().err == ("error: cannot write /runs/a/metrics.jsonl: No space left on device (errno 28); "
                                       "the run stopped there\n")

    def missing():
        raise OSError(errno.ENOENT, "No such file or directory", "/nowhere")

    with pytest.raises(FileNotFoundError):  # not a disk refusing writes: a bug keeps its traceback
        guarded(missing)
