"""Reading edits from JSONL, folders and stdin (spatialreward.manifest)."""

from __future__ import annotations

import io
import json
import shutil
import sys
import types
from pathlib import Path

import pytest

from conftest import write_jsonl
from spatialreward.errors import InputError, ManifestError
from spatialreward.manifest import read_manifest
from spatialreward.sample import Sample


def ok(samples):
    return [s for s in samples if s.error is None]


def bad(samples):
    return [s for s in samples if s.error is not None]


# --- JSONL ----------------------------------------------------------------------------


def test_basic_jsonl(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "a", "source": "src/a.png", "edited": "out/a.png", "instruction": "make the cup red"},
    ])
    [sample] = list(read_manifest(manifest))
    assert isinstance(sample, Sample)
    assert sample.error is None
    assert sample.id == "a"
    assert sample.source == str(tmp_path / "src" / "a.png")
    assert sample.edited == str(tmp_path / "out" / "a.png")
    assert sample.instruction == "make the cup red"
    assert sample.meta == {}
    assert sample.group is None and sample.group_size is None and sample.candidate is None
    assert sample.origin == f"{manifest}:1"


def test_accepts_path_object_and_string(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"id": 1, "source": "s.png", "edited": "e.png", "instruction": "x"}])
    assert [s.id for s in read_manifest(manifest)] == [s.id for s in read_manifest(str(manifest))] == ["1"]


def test_editreward_bench_aliases(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "k1", "input_image": ["imgs/in.png"], "output_image": "imgs/out.png", "prompt": "add a hat",
         "category": "add"},
    ])
    [sample] = list(read_manifest(manifest))
    assert sample.error is None
    assert sample.source == str(tmp_path / "imgs" / "in.png")
    assert sample.edited == str(tmp_path / "imgs" / "out.png")
    assert sample.instruction == "add a hat"
    assert sample.meta == {"category": "add"}
    assert sample.category == "add"


def test_output_images_alias_is_a_group(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "g", "input_image": ["in.png"], "output_images": ["o1.png", "o2.png"], "prompt": "p"},
    ])
    samples = list(read_manifest(manifest))
    assert [s.id for s in samples] == ["g#0", "g#1"]
    assert [s.edited for s in samples] == [str(tmp_path / "o1.png"), str(tmp_path / "o2.png")]
    assert all(s.group == "g" and s.group_size == 2 for s in samples)


def test_relative_paths_resolve_against_manifest_folder_not_cwd(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    manifest = write_jsonl(data / "m.jsonl", [
        {"id": "a", "source": "../shared/s.png", "edited": "e.png", "instruction": "x"},
    ])
    # given as a relative path from cwd, still resolved against the manifest's folder
    [sample] = list(read_manifest(Path("..") / "data" / "m.jsonl"))
    assert Path(sample.source).resolve() == (tmp_path / "shared" / "s.png").resolve()
    assert Path(sample.edited).resolve() == (data / "e.png").resolve()
    assert Path(sample.edited).is_absolute()
    assert manifest.exists()


def test_absolute_paths_kept(tmp_path):
    src = tmp_path / "abs" / "s.png"
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "source": str(src), "edited": "e.png", "instruction": "x"}])
    [sample] = list(read_manifest(manifest))
    assert sample.source == str(src)


def test_derived_id_stable_and_content_dependent(tmp_path):
    rows = [
        {"source": "s.png", "edited": "e1.png", "instruction": "x"},
        {"source": "s.png", "edited": "e2.png", "instruction": "x"},
        {"source": "s.png", "edited": "e1.png", "instruction": "y"},
    ]
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    first = [s.id for s in read_manifest(manifest)]
    second = [s.id for s in read_manifest(manifest)]
    assert first == second
    assert len(set(first)) == 3
    assert all(i and not i.startswith("line-") for i in first)
    assert all(s.error is None for s in read_manifest(manifest))


def test_derived_id_does_not_depend_on_line_position(tmp_path):
    row = {"source": "s.png", "edited": "e1.png", "instruction": "x"}
    one = write_jsonl(tmp_path / "one.jsonl", [row])
    two = write_jsonl(tmp_path / "two.jsonl", [{"source": "s.png", "edited": "other.png", "instruction": "x"}, row])
    assert next(iter(read_manifest(one))).id == list(read_manifest(two))[1].id


def test_integer_id_kept_as_string(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"id": 7, "source": "s.png", "edited": "e.png", "instruction": "x"}])
    assert [s.id for s in read_manifest(manifest)] == ["7"]


def test_other_fields_go_to_meta(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "a", "source": "s.png", "edited": "e.png", "instruction": "x", "category": "color",
         "model": "flux", "extra": {"k": [1, 2]}},
    ])
    [sample] = list(read_manifest(manifest))
    assert sample.meta == {"category": "color", "model": "flux", "extra": {"k": [1, 2]}}


def test_instruction_is_stripped(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "source": "s", "edited": "e", "instruction": "  x y \n"}])
    assert next(iter(read_manifest(manifest))).instruction == "x y"


def test_edited_list_expands_into_group(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "g", "source": "s.png", "edited": ["c0.png", "c1.png", "c2.png"], "instruction": "x", "category": "c"},
        {"id": "solo", "source": "s.png", "edited": "d.png", "instruction": "x"},
    ])
    samples = list(read_manifest(manifest))
    assert [s.id for s in samples] == ["g#0", "g#1", "g#2", "solo"]
    for k, sample in enumerate(samples[:3]):
        assert sample.group == "g"
        assert sample.group_size == 3
        assert sample.candidate == k
        assert sample.edited == str(tmp_path / f"c{k}.png")
        assert sample.source == str(tmp_path / "s.png")
        assert sample.meta == {"category": "c"}
    assert samples[3].group is None


def test_edited_list_without_id_uses_derived_group_id(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"source": "s.png", "edited": ["a.png", "b.png"], "instruction": "x"}])
    samples = list(read_manifest(manifest))
    assert len(samples) == 2
    group = samples[0].group
    assert group and samples[1].group == group
    assert [s.id for s in samples] == [f"{group}#0", f"{group}#1"]


def test_blank_lines_skipped(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        "",
        {"id": "a", "source": "s", "edited": "e", "instruction": "x"},
        "   ",
        {"id": "b", "source": "s", "edited": "e", "instruction": "x"},
    ])
    samples = list(read_manifest(manifest))
    assert [s.id for s in samples] == ["a", "b"]
    assert samples[1].origin.endswith(":4")


@pytest.mark.parametrize(
    "line, needle",
    [
        ("{not json", "invalid JSON"),
        ('["a", "b"]', "JSON object"),
        ('"just a string"', "JSON object"),
        ({"id": "x", "edited": "e", "instruction": "i"}, "source"),
        ({"id": "x", "source": "s", "instruction": "i"}, "edited"),
        ({"id": "x", "source": "s", "edited": "e"}, "instruction"),
        ({"id": "x", "source": "s", "edited": "e", "instruction": ""}, "empty instruction"),
        ({"id": "x", "source": "s", "edited": "e", "instruction": "   "}, "empty instruction"),
        ({"id": "x", "source": "s", "edited": "e", "instruction": 5}, "instruction"),
        ({"id": "x", "input_image": [f"s{k}.png" for k in range(9)], "edited": "e", "prompt": "p"},
         "9 source images; an edit takes 1 to 8"),
        ({"id": "x", "input_image": [], "edited": "e", "prompt": "p"}, "0 source images"),
        ({"id": "x", "source": [], "edited": "e", "instruction": "i"}, "source"),
        ({"id": "x", "source": 5, "edited": "e", "instruction": "i"}, "source"),
        ({"id": "x", "source": "s", "edited": [], "instruction": "i"}, "edited"),
        ({"id": "x", "source": "s", "edited": ["a", 3], "instruction": "i"}, "edited"),
        ({"id": "x", "source": "s", "edited": "", "instruction": "i"}, "edited"),
        ({"id": "", "source": "s", "edited": "e", "instruction": "i"}, "id"),
        ({"id": True, "source": "s", "edited": "e", "instruction": "i"}, "id"),
        ({"id": [1], "source": "s", "edited": "e", "instruction": "i"}, "id"),
    ],
    ids=repr,
)
def test_bad_line_becomes_error_sample_and_reading_goes_on(tmp_path, line, needle):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "first", "source": "s", "edited": "e", "instruction": "x"},
        line,
        {"id": "after", "source": "s", "edited": "e", "instruction": "x"},
    ])
    samples = list(read_manifest(manifest))
    assert len(samples) == 3
    assert samples[0].id == "first" and samples[0].error is None
    assert samples[2].id == "after" and samples[2].error is None
    broken = samples[1]
    assert isinstance(broken.error, InputError)
    assert broken.error.stage == "input"
    message = str(broken.error)
    assert f"{manifest}:2" in message
    assert needle in message
    assert broken.origin == f"{manifest}:2"


def test_bad_json_line_gets_line_id(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "source": "s", "edited": "e", "instruction": "x"}, "{oops"])
    samples = list(read_manifest(manifest))
    assert samples[1].id == "line-2"


def test_error_sample_keeps_its_id_and_meta(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "mine", "source": "s", "edited": "e", "instruction": "", "category": "color"},
    ])
    [sample] = list(read_manifest(manifest))
    assert sample.id == "mine"
    assert sample.meta == {"category": "color"}
    assert sample.error is not None


def test_duplicate_id_is_an_error_with_suffix(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "a", "source": "s", "edited": "e1", "instruction": "x"},
        {"id": "b", "source": "s", "edited": "e2", "instruction": "x"},
        {"id": "a", "source": "s", "edited": "e3", "instruction": "x"},
    ])
    samples = list(read_manifest(manifest))
    assert [s.error is None for s in samples] == [True, True, False]
    dup = samples[2]
    assert isinstance(dup.error, InputError)
    message = str(dup.error)
    assert f"{manifest}:3" in message
    assert "duplicate" in message and "'a'" in message
    assert dup.id != "a" and dup.id.startswith("a")
    assert dup.id == "a@3"
    assert dup.edited == str(tmp_path / "e3")


def test_identical_lines_without_id_are_duplicates(tmp_path):
    row = {"source": "s", "edited": "e", "instruction": "x"}
    samples = list(read_manifest(write_jsonl(tmp_path / "m.jsonl", [row, row])))
    assert samples[0].error is None
    assert samples[1].error is not None and "duplicate" in str(samples[1].error)
    assert samples[1].id != samples[0].id


def test_duplicate_group_candidate_loses_group(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "g", "source": "s", "edited": ["a", "b"], "instruction": "x"},
        {"id": "g", "source": "s", "edited": ["c", "d"], "instruction": "x"},
    ])
    samples = list(read_manifest(manifest))
    assert [s.error is None for s in samples] == [True, True, False, False]
    for dup in samples[2:]:
        assert dup.group is None and dup.group_size is None and dup.candidate is None
    assert len({s.id for s in samples}) == 4


def test_missing_manifest_path(tmp_path):
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in str(info.value)


def test_edited_dir_with_jsonl_file(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "source": "s", "edited": "e", "instruction": "x"}])
    with pytest.raises(ManifestError, match="folder"):
        read_manifest(manifest, edited_dir=tmp_path)


# --- stdin and streaming -----------------------------------------------------------------


def test_stdin(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = json.dumps({"id": "a", "source": "s.png", "edited": "e.png", "instruction": "x"}) + "\n{bad\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    samples = list(read_manifest("-"))
    assert samples[0].id == "a"
    assert samples[0].source == str(tmp_path / "s.png")  # relative to cwd for stdin
    assert samples[0].origin == "<stdin>:1"
    assert "<stdin>:2" in str(samples[1].error)


def test_stdin_with_edited_dir_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(ManifestError):
        read_manifest("-", edited_dir=tmp_path)


class CountingStdin:
    """A stdin that produces lines on demand and counts how many were taken."""

    def __init__(self, total: int):
        self.total = total
        self.taken = 0

    def __iter__(self):
        for i in range(self.total):
            self.taken += 1
            yield json.dumps({"id": f"s{i}", "source": "s.png", "edited": f"e{i}.png", "instruction": "x"}) + "\n"


def test_streaming_from_stdin(monkeypatch):
    stdin = CountingStdin(100_000)
    monkeypatch.setattr(sys, "stdin", stdin)
    samples = read_manifest("-")
    assert isinstance(samples, types.GeneratorType) or iter(samples) is samples
    first = next(samples)
    assert first.id == "s0"
    assert stdin.taken <= 2  # not read to the end before the first sample
    second = next(samples)
    assert second.id == "s1"
    assert stdin.taken <= 3


def test_streaming_from_large_file(tmp_path):
    manifest = tmp_path / "big.jsonl"
    line = json.dumps({"source": "s.png", "edited": "e.png", "instruction": "x"})
    with manifest.open("w") as handle:
        handle.write(json.dumps({"id": "first", "source": "s.png", "edited": "e.png", "instruction": "x"}) + "\n")
        for i in range(50_000):
            handle.write(line.replace("e.png", f"e{i}.png") + "\n")
    samples = read_manifest(manifest)
    assert iter(samples) is samples
    assert next(samples).id == "first"


# --- folder layout ------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path, photos):
    root = tmp_path / "evalset"
    (root / "source").mkdir(parents=True)
    (root / "edited").mkdir()
    shutil.copy(photos["coffee"], root / "source" / "cup.png")
    shutil.copy(photos["coffee_red_square"], root / "edited" / "cup.png")
    shutil.copy(photos["astronaut"], root / "source" / "astro.png")
    shutil.copy(photos["astronaut_mirror"], root / "edited" / "astro.jpg")  # extension may differ
    cands = root / "edited" / "multi"
    cands.mkdir()
    shutil.copy(photos["coffee"], root / "source" / "multi.png")
    shutil.copy(photos["coffee_blur"], cands / "b_blur.png")
    shutil.copy(photos["coffee_gray"], cands / "a_gray.jpg")
    shutil.copy(photos["coffee_red_square"], cands / "c_red.png")
    (cands / "notes.txt").write_text("not an image")
    write_jsonl(root / "instructions.jsonl", [
        {"name": "cup", "instruction": "paint a red square on the cup", "category": "add"},
        {"name": "astro", "instruction": "mirror the photo", "category": "flip"},
        {"name": "multi", "instruction": "improve the photo"},
    ])
    return root


def test_folder_layout(folder):
    samples = list(read_manifest(folder))
    assert all(s.error is None for s in samples), [str(s.error) for s in samples]
    by_id = {s.id: s for s in samples}
    assert list(by_id) == ["cup", "astro", "multi#0", "multi#1", "multi#2"]
    cup = by_id["cup"]
    assert cup.source == str(folder / "source" / "cup.png")
    assert cup.edited == str(folder / "edited" / "cup.png")
    assert cup.instruction == "paint a red square on the cup"
    assert cup.meta == {"category": "add"}
    assert cup.category == "add"
    assert cup.group is None
    assert by_id["astro"].edited == str(folder / "edited" / "astro.jpg")
    assert cup.origin == f"{folder / 'instructions.jsonl'}:1"


def test_folder_of_candidates_is_a_group_sorted_by_filename(folder):
    multi = [s for s in read_manifest(folder) if s.group == "multi"]
    assert [Path(s.edited).name for s in multi] == ["a_gray.jpg", "b_blur.png", "c_red.png"]
    assert [s.candidate for s in multi] == [0, 1, 2]
    assert all(s.group_size == 3 for s in multi)
    assert all(s.source == str(s.source) and s.source.endswith("multi.png") for s in multi)


def test_folder_edited_dir_swaps_the_edited_folder(folder, tmp_path, photos):
    other = tmp_path / "runs" / "model-b"
    other.mkdir(parents=True)
    shutil.copy(photos["coffee_blur"], other / "cup.png")
    shutil.copy(photos["astronaut"], other / "astro.png")
    samples = list(read_manifest(folder, edited_dir=other))
    by_id = {s.id: s for s in samples}
    assert by_id["cup"].edited == str(other / "cup.png")
    assert by_id["cup"].source == str(folder / "source" / "cup.png")
    assert by_id["astro"].edited == str(other / "astro.png")
    # 'multi' has no edit in the other folder: an error sample, the rest still read
    assert by_id["multi"].error is not None
    assert "multi" in str(by_id["multi"].error)


def test_folder_missing_edited_image_is_error_sample(folder):
    (folder / "edited" / "cup.png").unlink()
    samples = list(read_manifest(folder))
    cup = samples[0]
    assert cup.id == "cup"
    assert isinstance(cup.error, InputError)
    assert "instructions.jsonl:1" in str(cup.error)
    assert "cup" in str(cup.error)
    assert [s.id for s in samples[1:]] == ["astro", "multi#0", "multi#1", "multi#2"]
    assert all(s.error is None for s in samples[1:])


def test_folder_missing_source_image_is_error_sample(folder):
    (folder / "source" / "astro.png").unlink()
    samples = list(read_manifest(folder))
    astro = next(s for s in samples if s.id == "astro")
    assert astro.error is not None and "source" in str(astro.error)


def test_folder_bad_instruction_lines(folder):
    with (folder / "instructions.jsonl").open("a") as handle:
        handle.write("{bad\n")
        handle.write(json.dumps({"name": "cup2", "instruction": ""}) + "\n")
        handle.write(json.dumps({"instruction": "no name"}) + "\n")
        handle.write(json.dumps({"name": "../cup", "instruction": "escape"}) + "\n")
    samples = list(read_manifest(folder))
    errors = [s for s in samples if s.error is not None]
    assert len(errors) == 4
    for number, sample in zip((4, 5, 6, 7), errors):
        assert f"instructions.jsonl:{number}" in str(sample.error)


def test_folder_missing_instructions(folder):
    (folder / "instructions.jsonl").unlink()
    with pytest.raises(ManifestError, match="instructions.jsonl"):
        list(read_manifest(folder))


def test_folder_missing_instructions_fails_at_call(folder):
    """The CLI calls read_manifest before loading the model: a manifest that
    cannot be read at all must fail then, like a missing manifest path does,
    not when the first sample is requested (after the model has loaded)."""
    (folder / "instructions.jsonl").unlink()
    with pytest.raises(ManifestError):
        read_manifest(folder)


def test_folder_missing_edited_dir(folder, tmp_path):
    with pytest.raises(ManifestError):
        list(read_manifest(folder, edited_dir=tmp_path / "nowhere"))


def test_folder_manifest_given_relative_records_absolute_paths(tmp_path, monkeypatch):
    root = tmp_path / "evalset"
    (root / "source").mkdir(parents=True)
    (root / "edited").mkdir()
    other = tmp_path / "runs" / "pr"
    other.mkdir(parents=True)
    for folder in (root / "source", root / "edited", other):
        (folder / "cup.png").write_bytes(b"x")
    (root / "instructions.jsonl").write_text('{"name": "cup", "instruction": "Add a cup"}\n')
    monkeypatch.chdir(tmp_path)
    [sample] = list(read_manifest("evalset", edited_dir="runs/pr"))
    assert sample.source == str(root / "source" / "cup.png")
    assert sample.edited == str(other / "cup.png")


def test_folder_several_sources_in_a_source_folder(folder, photos):
    """source/NAME/ holds an edit's sources, taken in file-name order (one image
    there is one source); source/NAME.* stays one source, byte for byte."""
    fused = folder / "source" / "fused"
    fused.mkdir()
    shutil.copy(photos["astronaut"], fused / "2_astro.png")
    shutil.copy(photos["coffee"], fused / "1_cup.jpg")
    shutil.copy(photos["coffee_gray"], fused / "10_gray.png")  # file-name order, not numeric: "10_" before "1_"
    (fused / "notes.txt").write_text("not an image")
    shutil.copy(photos["coffee_red_square"], folder / "edited" / "fused.png")
    lone = folder / "source" / "lone"
    lone.mkdir()
    shutil.copy(photos["coffee"], lone / "only.png")
    shutil.copy(photos["coffee_blur"], folder / "edited" / "lone.png")
    group = folder / "source" / "grp"
    group.mkdir()
    shutil.copy(photos["coffee"], group / "a.png")
    shutil.copy(photos["astronaut"], group / "b.png")
    (folder / "edited" / "grp").mkdir()
    shutil.copy(photos["coffee_blur"], folder / "edited" / "grp" / "x.png")
    shutil.copy(photos["coffee_gray"], folder / "edited" / "grp" / "y.png")
    with (folder / "instructions.jsonl").open("a") as handle:
        for name in ("fused", "lone", "grp"):
            handle.write(json.dumps({"name": name, "instruction": f"fuse {name}"}) + "\n")
    by_id = {s.id: s for s in read_manifest(folder)}
    assert all(s.error is None for s in by_id.values()), [str(s.error) for s in by_id.values()]
    assert by_id["fused"].source == [str(fused / n) for n in ("10_gray.png", "1_cup.jpg", "2_astro.png")]
    assert by_id["fused"].edited == str(folder / "edited" / "fused.png")
    assert by_id["lone"].source == str(lone / "only.png")  # one image in the folder: one source, a path
    assert [s.source for s in by_id.values() if s.group == "grp"] == [[str(group / "a.png"), str(group / "b.png")]] * 2
    assert by_id["cup"].source == str(folder / "source" / "cup.png")  # the single-source layout unchanged


def test_folder_source_folder_problems(folder, photos):
    empty = folder / "source" / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images")
    many = folder / "source" / "many"
    many.mkdir()
    for k in range(9):
        shutil.copy(photos["coffee"], many / f"{k}.png")
    both = folder / "source" / "cup"  # a file source/cup.png exists too: the file wins, as for edited/
    both.mkdir()
    shutil.copy(photos["astronaut"], both / "a.png")
    shutil.copy(photos["astronaut"], both / "b.png")
    for name in ("empty", "many"):
        shutil.copy(photos["coffee_blur"], folder / "edited" / f"{name}.png")
    with (folder / "instructions.jsonl").open("a") as handle:
        for name in ("empty", "many"):
            handle.write(json.dumps({"name": name, "instruction": "x"}) + "\n")
    by_id = {s.id: s for s in read_manifest(folder)}
    assert "no source image" in str(by_id["empty"].error) and "instructions.jsonl:4" in str(by_id["empty"].error)
    assert "9 source images" in str(by_id["many"].error) and "1 to 8" in str(by_id["many"].error)
    assert by_id["cup"].error is None and by_id["cup"].source == str(folder / "source" / "cup.png")


def test_byte_order_mark_is_accepted(tmp_path):
    """Editors on Windows save UTF-8 with a BOM: line 1 must still parse."""
    path = tmp_path / "bom.jsonl"
    line = json.dumps({"id": "a", "source": "s.png", "edited": "e.png", "instruction": "Remove the dog"})
    path.write_bytes(b"\xef\xbb\xbf" + line.encode() + b"\n")
    sample, = read_manifest(path)
    assert sample.error is None and sample.id == "a"


def test_byte_order_mark_in_folder_instructions(tmp_path):
    for sub in ("source", "edited"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "cat.png").write_bytes(b"x")
    (tmp_path / "instructions.jsonl").write_bytes(
        b"\xef\xbb\xbf" + json.dumps({"name": "cat", "instruction": "Remove the dog"}).encode() + b"\n")
    sample, = read_manifest(tmp_path)
    assert sample.error is None and sample.instruction == "Remove the dog"


def test_bytes_that_are_not_utf8_fail_their_line_only(tmp_path):
    """Not silently replaced by U+FFFD inside an instruction the model would judge."""
    path = tmp_path / "latin1.jsonl"
    good = json.dumps({"id": "ok", "source": "s.png", "edited": "e.png", "instruction": "Remove the dog"})
    bad = '{"id": "bad", "source": "s.png", "edited": "e.png", "instruction": "Caf\xe9"}'.encode("latin-1")
    path.write_bytes(bad + b"\n" + good.encode() + b"\n")
    first, second = read_manifest(path)
    assert first.error is not None and f"{path}:1" in first.error.message and "not valid UTF-8" in first.error.message
    assert second.error is None and second.id == "ok"


def test_stdin_with_bom_and_bad_bytes(monkeypatch):
    good = json.dumps({"id": "a", "source": "/s.png", "edited": "/e.png", "instruction": "x"}).encode()
    data = b"\xef\xbb\xbf" + good + b"\n" + b'{"id": "b", "instruction": "\xff"}\n'
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    first, second = read_manifest("-")
    assert first.error is None
    assert "<stdin>:2" in second.error.message and "UTF-8" in second.error.message


def test_json_error_message_reads_well(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "instruction": "unterminated\n')
    sample, = read_manifest(path)
    # The string is unterminated where it opens (column 28), not a "control character" (the line break).
    assert sample.error.message == f"{path}:1: invalid JSON: Unterminated string starting at column 28"
    assert "at at" not in sample.error.message
