"""Log records of stage processes reach the frontend's loggers, over ZeroMQ
(metropc.stage.stagelogs), and leave nothing in /dev/shm."""

from __future__ import annotations

import logging
import os
import pickle
import time

import pytest
import zmq

from metropc.stage.stagelogs import LogForwarder, _Sender

LOGGING_CTX = """
import logging

@View.Scalar
def tid(t: 'internal#train_id'):
    logging.getLogger("metropc.test_stagelogs").warning("view saw train %d", t)
    return t
"""


def _sem_files() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("sem.")}


def _wait_for(caplog, text, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in caplog.records if text in r.getMessage()]
        if found:
            return found
        time.sleep(0.02)  # polling the records the forwarder's thread adds
    raise AssertionError(f"no record {text!r} within {timeout} s: "
                         f"{[r.getMessage() for r in caplog.records]}")


@pytest.mark.timeout(120)
def test_a_stage_process_logs_through_the_frontend_without_semaphores(caplog):
    """A warning logged by a view in a POOL process arrives in the frontend's
    logger of the same name, from that process; the pipeline made no
    semaphore in /dev/shm (a multiprocessing queue makes three, which a
    SIGKILL of the process group leaves there for ever)."""
    from metropc.client import Client
    from metropc.pipeline import Pipeline

    caplog.set_level(logging.WARNING)
    before = _sem_files()
    with Pipeline(LOGGING_CTX, source=None, pool=1) as pipe, \
            Client(pipe.output_addr, views=["tid"], timeout=30) as client:
        pipe.request_index()
        client.wait_index()
        pipe.send({"internal#train_id": 7})
        assert client.recv(timeout=30)[1]["data"] == 7
        (record,) = _wait_for(caplog, "view saw train 7")
        made = _sem_files() - before
    assert record.name == "metropc.test_stagelogs"
    assert record.levelno == logging.WARNING
    assert record.process != os.getpid()  # (from the stage's process)
    assert not made, made


def test_a_malformed_record_is_dropped_and_said_once(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    forwarder = LogForwarder(str(tmp_path))
    zctx = zmq.Context()
    push = zctx.socket(zmq.PUSH)
    push.linger = 1000
    try:
        push.connect(forwarder.address)
        push.send(b"not a pickle")
        push.send(pickle.dumps({"a": "dict, no record"}))
        good = logging.makeLogRecord({"name": "metropc.test_stagelogs",
                                      "levelno": logging.ERROR, "levelname": "ERROR",
                                      "msg": "after the garbage"})
        push.send(pickle.dumps(good))
        _wait_for(caplog, "after the garbage")
        said = [r for r in caplog.records if "cannot be read" in r.getMessage()]
        assert len(said) == 1 and "UnpicklingError" in said[0].getMessage()
        assert forwarder.malformed == 2
    finally:
        push.close()
        zctx.term()
        forwarder.close()
    assert not (tmp_path / "logs").exists()


def test_a_record_that_cannot_be_pickled_still_says_its_message(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    forwarder = LogForwarder(str(tmp_path))
    sender = _Sender(forwarder.address)
    try:
        record = logging.makeLogRecord({"name": "metropc.test_stagelogs",
                                        "levelno": logging.WARNING,
                                        "levelname": "WARNING", "msg": "lambda %s",
                                        "args": ("attached",), "fn": lambda: None})
        sender.handle(record)
        (got,) = _wait_for(caplog, "lambda attached")
        assert not hasattr(got, "fn")
    finally:
        sender.close()
        forwarder.close()
    sender.handle(record)  # closed (the process is leaving): dropped, no error
