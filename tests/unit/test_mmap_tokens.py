"""The MMIDIDX reader and writer (cald_brain.data.mmap_tokens): files written by our writer are checked byte
by byte against the format spec (shared/reference/DATA_FORMATS.md, Pile section), independently of our reader;
the reader validates headers, memory-maps, returns exact sequences in the reference's order, and the committed
mini corpus is such a file; the segmented training stream replays the reference's passes and batches."""

import pickle
import struct

import numpy as np
import pytest
import torch
from conftest import SAMPLES

from cald_brain.data.mmap_tokens import (
    MAGIC,
    MMapFormatError,
    MMapTokens,
    SegmentedBatches,
    TokenSequences,
    check_token_ids,
    write_mmap_tokens,
)


def parse_by_spec(idx: bytes) -> dict:
    """The .idx fields as the format spec lists them (no code shared with the reader)."""
    n, m = struct.unpack_from("<QQ", idx, 18)
    off = 34
    return {
        "magic": idx[:9],
        "version": struct.unpack_from("<Q", idx, 9)[0],
        "dtype": idx[17],
        "n": n,
        "docs": m,
        "sizes": list(struct.unpack_from(f"<{n}i", idx, off)),
        "pointers": list(struct.unpack_from(f"<{n}q", idx, off + 4 * n)),
        "doc_idx": list(struct.unpack_from(f"<{m}q", idx, off + 12 * n)),
        "length": len(idx),
    }


def corpus(tmp_path, sizes=(5, 3, 7), seed=0):
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, 50000, size=s) for s in sizes]
    write_mmap_tokens(tmp_path / "document", seqs)
    return tmp_path / "document", seqs


def test_writer_follows_the_spec(tmp_path):
    prefix, seqs = corpus(tmp_path)
    spec = parse_by_spec((tmp_path / "document.idx").read_bytes())
    assert spec["magic"] == b"MMIDIDX\x00\x00" and spec["version"] == 1 and spec["dtype"] == 8  # uint16
    assert spec["n"] == 3 and spec["sizes"] == [5, 3, 7]
    assert spec["pointers"] == [0, 10, 16]  # byte offsets: 2 bytes per token
    assert spec["doc_idx"] == [0, 1, 2, 3] and spec["docs"] == 4
    assert spec["length"] == 34 + 12 * 3 + 8 * 4
    stream = np.frombuffer((tmp_path / "document.bin").read_bytes(), dtype="<u2")
    assert stream.tolist() == np.concatenate(seqs).tolist()


def test_reader_returns_exact_sequences(tmp_path):
    prefix, seqs = corpus(tmp_path)
    data = MMapTokens(prefix)
    assert len(data) == 3 and data.dtype == np.uint16
    for i, seq in enumerate(seqs):
        assert data[i].tolist() == seq.tolist()
    assert MMapTokens(str(prefix) + ".bin")[2].tolist() == seqs[2].tolist()  # suffix accepted
    with pytest.raises(IndexError):
        data[3]


def test_reader_memory_maps(tmp_path):
    prefix, _ = corpus(tmp_path)
    data = MMapTokens(prefix)
    assert isinstance(data._data, np.memmap) and isinstance(data._index, np.memmap)
    assert not data[1].flags.writeable and not data[1].flags.owndata  # a view into the map, not a copy
    state = pickle.dumps(data)
    assert len(state) < 200  # pickled as its path (dataloader workers), not as its content
    assert pickle.loads(state)[0].tolist() == data[0].tolist()


@pytest.mark.parametrize(
    "patch, message",
    [
        (lambda b: b"XXXXXXX\x00\x00" + b[9:], "not an MMIDIDX index"),
        (lambda b: b[:9] + struct.pack("<Q", 2) + b[17:], "version 2"),
        (lambda b: b[:17] + bytes([9]) + b[18:], "unknown dtype code 9"),
        (lambda b: b[:-8], "truncated or corrupt"),
        (lambda b: b[:5], "not an MMIDIDX index"),
    ],
)
def test_bad_headers_are_refused(tmp_path, patch, message):
    prefix, _ = corpus(tmp_path)
    idx = tmp_path / "document.idx"
    idx.write_bytes(patch(idx.read_bytes()))
    with pytest.raises(MMapFormatError, match=message):
        MMapTokens(prefix)


def test_truncated_bin_and_missing_files_are_refused(tmp_path):
    prefix, _ = corpus(tmp_path)
    binary = tmp_path / "document.bin"
    binary.write_bytes(binary.read_bytes()[:-2])
    with pytest.raises(ValueError, match="holds only the first 2 of the 3 sequences.*truncated"):
        TokenSequences(prefix, 0, 3, seq_length=3)
    with pytest.raises(IndexError, match="holds the first 2"):
        MMapTokens(prefix)[2]
    binary.write_bytes(b"\0\0")
    with pytest.raises(MMapFormatError, match="not even the first sequence"):
        MMapTokens(prefix)
    with pytest.raises(FileNotFoundError, match="data_prefix"):
        MMapTokens(tmp_path / "nothing")


def test_full_index_with_the_first_shard_of_the_bin(tmp_path):
    """The layout lm/Pile/README.md documents: the whole corpus's document.idx, only the first shard's
    document.bin (here 10 sequences of 8 tokens, the .bin cut after the first 4)."""
    seqs = [np.full(8, i) for i in range(10)]
    prefix = tmp_path / "document"
    write_mmap_tokens(prefix, seqs)
    binary = tmp_path / "document.bin"
    binary.write_bytes(binary.read_bytes()[: 4 * 8 * 2 + 6])  # 4 sequences and part of the 5th
    data = MMapTokens(prefix)
    assert len(data) == 10 and data.available == 4
    assert TokenSequences(data, 1, 3, seq_length=8)[2]["input_ids"].tolist() == [3] * 8
    assert len(TokenSequences(data, seq_length=8)) == 4  # count None: to the end of the .bin
    with pytest.raises(ValueError, match="holds only the first 4 of the 10 sequences.*sequences 2..5.*lower"):
        TokenSequences(data, 2, 4, seq_length=8)


@pytest.mark.parametrize("uniform", [True, False], ids=["contiguous", "per-sequence"])
def test_token_ids_beyond_the_vocabulary_name_the_sequence(tmp_path, uniform):
    seqs = [np.arange(10) + i for i in range(30)]
    if not uniform:
        seqs[3] = np.arange(12)  # a longer sequence: its tail is not used
    seqs[17][4] = 700
    write_mmap_tokens(tmp_path / "document", seqs)
    data = TokenSequences(tmp_path / "document", seq_length=10)
    check_token_ids(TokenSequences(data.corpus, 0, 17, seq_length=10), 100, chunk_tokens=40)  # before it
    check_token_ids(data, 701)
    with pytest.raises(MMapFormatError, match="sequence 17 holds token id 700.*vocabulary of 700 ids"):
        check_token_ids(data, 700, chunk_tokens=40)


def test_token_sequences_order_range_and_length(tmp_path):
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 1000, size=12) for _ in range(6)]
    write_mmap_tokens(tmp_path / "document", seqs)
    view = TokenSequences(tmp_path / "document", start=2, count=3, seq_length=10)
    assert len(view) == 3
    for i in range(3):
        item = view[i]
        assert item["id"] == f"seq{2 + i}"
        assert item["input_ids"].dtype == torch.int64
        assert item["input_ids"].tolist() == seqs[2 + i][:10].tolist()  # reference: first seq_length tokens
    with pytest.raises(ValueError, match="sequences 4..6"):
        TokenSequences(tmp_path / "document", start=4, count=3, seq_length=10)
    with pytest.raises(MMapFormatError, match="fewer than seq_length=13"):
        TokenSequences(tmp_path / "document", seq_length=13)


def test_committed_mini_corpus():
    prefix = SAMPLES / "pile_mini" / "document"
    spec = parse_by_spec(prefix.with_suffix(".idx").read_bytes())
    assert spec["magic"] == MAGIC and spec["dtype"] == 8 and spec["sizes"] == [129] * 64
    data = MMapTokens(prefix)
    vocab = 1024  # tests/samples/models/tiny-pythia
    assert all(0 <= int(data[i].max()) < vocab for i in range(len(data)))
    check_token_ids(TokenSequences(data, seq_length=129), vocab)
    with pytest.raises(MMapFormatError, match="outside the model's vocabulary"):
        check_token_ids(TokenSequences(data, seq_length=129), int(data[0].max()))
    assert len(TokenSequences(data, 0, 64, seq_length=129)) == 64


def segments(stream: SegmentedBatches) -> list[list[list[int]]]:
    out = []
    for epoch in range(1, stream.segments + 1):
        stream.set_epoch(epoch)
        out.append(list(stream))
        assert len(stream) == len(out[-1])
    return out


def test_segments_replay_the_reference_passes_in_order():
    # 10 items in batches of 3 (the last batch of a pass has 1), 2 passes, segments of 3 batches
    passes = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]] * 2
    stream = SegmentedBatches(10, 3, passes=2, batches_per_segment=3)
    assert segments(stream) == [passes[0:3], passes[3:6], passes[6:8]]
    assert stream.optimizer_steps(3) == 2 and stream.optimizer_steps(1) == 8  # 3 // 3 + 3 // 3 + 2 // 3
    with pytest.raises(ValueError, match="past the last of the stream's 3 segments"):
        stream.set_epoch(4)
    # two processes: stream batch k goes to rank k % 2, each rank's batches cut into segments of 2
    rank0, rank1 = (SegmentedBatches(10, 3, 2, 2, rank=r, world_size=2) for r in (0, 1))
    assert segments(rank0) == [[passes[0], passes[2]], [passes[4], passes[6]]]
    assert segments(rank1) == [[passes[1], passes[3]], [passes[5], passes[7]]]
