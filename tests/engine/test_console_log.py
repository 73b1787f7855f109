"""train.log: what the console showed, kept until the run folder exists, without progress bars."""
import sys

from tqdm import tqdm

from detector.utils.console_log import ConsoleLog


def test_the_log_copies_both_streams_without_progress_bars(tmp_path, capsys):
    log = tmp_path / "train.log"
    with ConsoleLog() as console:
        print("before the folder exists")
        print("a warning", file=sys.stderr)
        assert not log.exists()  # nothing written until attach: a refused run leaves no file
        console.attach(str(log))
        for _ in tqdm(range(3), file=sys.stderr, mininterval=0, desc="train"):
            pass
        print("final table")
    print("after the context")
    assert log.read_text() == "before the folder exists\na warning\nfinal table\n"
    out, err = capsys.readouterr()
    assert "final table" in out and "after the context" in out and "train: 100%" in err  # the console is unchanged
    with ConsoleLog() as console:  # a resumed run appends
        console.attach(str(log))
        print("resumed")
    assert log.read_text().endswith("final table\nresumed\n")
