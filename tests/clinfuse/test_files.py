"""Reading back the JSON files of clinfuse's output folders: errors name the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from clinfuse._files import read_json_object
from clinfuse.errors import ConfigError


def test_a_json_object_is_read_and_anything_else_is_refused_naming_the_file(tmp_path: Path):
    good = tmp_path / "metrics.json"
    good.write_text('{"n_cases": 3, "run": {"model_sha256": "ab"}}', encoding="utf-8")
    assert read_json_object(good, "the metrics") == {"n_cases": 3, "run": {"model_sha256": "ab"}}
    broken = tmp_path / "broken.json"
    broken.write_text('{"n_cases": ', encoding="utf-8")
    listed = tmp_path / "listed.json"
    listed.write_text("[1, 2]", encoding="utf-8")
    for path, message in (
        (broken, "cannot read the metrics: Expecting value"),
        (listed, "the metrics is not a JSON object"),
        (tmp_path / "absent.json", "cannot read the metrics: [Errno 2]"),
    ):
        with pytest.raises(ConfigError) as info:
            read_json_object(path, "the metrics", hint="pass the evaluation folder")
        assert info.value.reason.startswith(message), info.value.reason
        assert info.value.path == str(path) and info.value.hint == "pass the evaluation folder"
