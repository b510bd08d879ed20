import os
import signal

import pytest

from dpo.errors import PeerFailed, UserError, entry_point


def test_user_error_is_one_line_per_problem_and_status_1(capsys):
    @entry_point
    def main(argv=None):
        raise UserError("data.jsonl:3: expected a JSON object\ndata.jsonl:9: expected a JSON object")

    assert main() == 1
    assert capsys.readouterr().err.splitlines() == ["error: data.jsonl:3: expected a JSON object",
                                                     "error: data.jsonl:9: expected a JSON object"]


def test_a_peer_failing_says_only_that_this_rank_stops(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")

    @entry_point
    def main(argv=None):
        raise PeerFailed("rank 1 failed")

    assert main() == 1
    assert capsys.readouterr().err.splitlines() == ["rank 0: stopped: rank 1 failed"]


@pytest.mark.parametrize("world_size", ["1", "2"])
def test_sigterm_stops_with_one_line_status_143_after_finally_blocks(capsys, monkeypatch, world_size):
    # torchrun sends SIGTERM to the other ranks once one fails: they say why they stop, with no traceback
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", world_size)
    cleaned_up = []

    @entry_point
    def main(argv=None):
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # (the handler runs before the next line)
            cleaned_up.append("SIGTERM did not stop main")
        except Exception:  # the work's own error handling: termination is not a failure to handle
            cleaned_up.append("SIGTERM was handled as a failure")
        finally:
            cleaned_up.append(True)

    before = signal.getsignal(signal.SIGTERM)
    assert main() == 128 + signal.SIGTERM
    assert cleaned_up == [True]
    assert signal.getsignal(signal.SIGTERM) is before  # only main() runs under the handler
    expected = {"1": "stopped: terminated (SIGTERM)",
                "2": "rank 1: stopped: terminated (SIGTERM): torchrun stops every rank once one fails "
                     "(its error is above), or the job was cancelled"}[world_size]
    assert capsys.readouterr().err.splitlines() == [expected]


def test_ctrl_c_stops_with_one_line_and_status_130(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    @entry_point
    def main(argv=None):
        raise KeyboardInterrupt

    assert main() == 128 + signal.SIGINT
    assert capsys.readouterr().err.splitlines() == ["stopped: interrupted (SIGINT)"]
