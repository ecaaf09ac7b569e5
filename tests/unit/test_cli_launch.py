"""`orch job dispatch` / `orch job periodic force` parsing and the status lines."""

import base64
import re

import pytest

from orch import __main__ as entry
from orch import errors
from orch.cli.job import job_summary
from orch.cli.launch import (
    children_text,
    dispatch_target,
    next_launch_text,
    parse_meta,
    read_payload,
)


def parse(*argv):
    return entry.build_parser().parse_args(list(argv))


def test_dispatch_takes_single_and_double_dash_meta_and_a_payload_file():
    args = parse("job", "dispatch", "work", "-meta", "user=ann", "--meta", "mode=a=b", "in.json")
    assert args.id == "work"
    pairs, payload = dispatch_target(args)
    assert payload == "in.json" and parse_meta(pairs) == {"user": "ann", "mode": "a=b"}
    args = parse("job", "dispatch", "-meta", "a=1", "work", "-", "--meta=b=2")
    assert dispatch_target(args) == (["a=1", "b=2"], "-")
    args = parse("job", "dispatch", "work", "--address", "http://h:1/", "-meta", "c=3")
    assert dispatch_target(args) == (["c=3"], None) and args.address == "http://h:1"
    with pytest.raises(SystemExit):
        dispatch_target(parse("job", "dispatch", "work", "a", "b"))
    assert parse("job", "periodic", "force", "nightly").id == "nightly"


@pytest.mark.parametrize("pair", ["novalue", "=x"])
def test_bad_meta_pairs_are_refused(pair):
    with pytest.raises(errors.ValidationError, match="KEY=VALUE"):
        parse_meta([pair])


def test_payload_file_is_sent_as_base64(tmp_path):
    path = tmp_path / "in.bin"
    path.write_bytes(b"\x00\xffdata")
    assert base64.b64decode(read_payload(str(path))) == b"\x00\xffdata"
    assert read_payload(None) is None
    with pytest.raises(errors.ValidationError):
        read_payload(str(tmp_path / "missing"))


def test_children_and_next_launch_lines():
    job = {
        "job_id": "nightly",
        "status": "running",
        "task_groups": [{"name": "g", "count": 1}],
        "children": [{"job_id": "nightly-periodic-100", "status": "complete"}],
        "next_launch": 1060.0,
    }
    assert re.search(r"Next launch += in 60s", job_summary(job, 1000.0))
    text = children_text(job, 1000.0)
    assert re.search(r"nightly-periodic-100 +complete", text)
    assert "No children" in children_text({"children": []}, 0.0)
    assert next_launch_text({"next_launch": None}, 0.0) == "none"
