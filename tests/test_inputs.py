"""A misspelled input path is named (metropc.inputs.UnseenInputs), in metropc.run too."""

from __future__ import annotations

import logging

import metropc
from metropc.core import Context
from metropc.inputs import UnseenInputs

IMAGE = "karabo#SPB_DET/CAM/1:output[data.image]"

CTX = f"""
@View.Scalar
def total(img: '{IMAGE[:-2]}eg]'):         # misspelled: data.imaeg
    return img.sum()

@View.Scalar
def later(x: 'karabo#SLOW/DEV/1.value'):   # comes in event 15 only
    return x

@View.Scalar
def optional(t: 'internal#train_id', y: 'karabo#NOT/THERE/1.y' = None):
    return t

@View.Scalar
def derived(v: 'view#total', t: 'internal#nonsense'):
    return v
"""


def events(n):
    for t in range(n):
        event = {"internal#train_id": t, IMAGE: t}
        if t == 15:
            event["karabo#SLOW/DEV/1.value"] = 1.0
        yield event


def test_a_path_none_of_the_first_events_has_is_named_once_with_the_closest():
    ctx = Context(CTX, path="ctx.py")
    unseen = UnseenInputs(ctx, after=20)
    said = [message for event in events(40) for message in unseen.note(event)]
    assert said == [f"none of the first 20 event(s) has '{IMAGE[:-2]}eg]'; did you mean "
                    f"'{IMAGE}'?; view(s) needing it did not run: 'total' (ctx.py:2)"]
    assert unseen.finish() == []  # said already


def test_fewer_events_are_judged_at_the_end_and_nothing_wanted_costs_nothing():
    ctx = Context(CTX, path="ctx.py")
    unseen = UnseenInputs(ctx, after=20)
    assert [m for e in events(3) for m in unseen.note(e)] == []
    said = unseen.finish()
    assert [m.split("'")[1] for m in said] == ["karabo#SLOW/DEV/1.value",
                                               f"{IMAGE[:-2]}eg]"]
    assert "did you mean" not in said[0]
    assert UnseenInputs(Context("@View.Scalar\ndef a(t: 'internal#train_id'):\n    return t\n"),
                        after=1).done
    assert UnseenInputs(ctx).finish() == []  # no event: nothing to judge


def test_metropc_run_warns_of_the_misspelled_path(caplog):
    caplog.set_level(logging.WARNING, logger="metropc.inprocess")
    out = list(metropc.run(Context(CTX, path="ctx.py"), events(25)))
    assert len(out) == 25 and all("total" not in results for _, results in out)
    (record,) = caplog.records
    assert record.getMessage().startswith(f"none of the first 20 event(s) has '{IMAGE[:-2]}eg]'")
