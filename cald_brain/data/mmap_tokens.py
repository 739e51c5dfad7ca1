"""Megatron's memory-mapped indexed token format (MMIDIDX), as the Pythia pre-shuffled Pile ships it.

A corpus is a pair `<prefix>.idx` + `<prefix>.bin`. The index (little endian) holds: the magic
`MMIDIDX\\x00\\x00` (9 bytes), `<Q` version 1, `<B` dtype code, `<Q` number of sequences n, `<Q` number of
document-index entries m, then `int32 sizes[n]`, `int64 pointers[n]` (byte offsets into the .bin) and
`int64 doc_idx[m]`. The .bin is the raw token stream. In the Pythia Pile every sequence holds 2,049 tokens
(GPT-NeoX-20B tokenizer, documents joined with EOD).

`MMapTokens` memory-maps both files (nothing is read whole), validates the header and the table sizes against
the file sizes, and returns sequence i as the tokens at pointers[i]. The .bin may hold only the first
sequences of the index (the layout lm/Pile/README.md documents: the full `document.idx` with the first shard
of the .bin): `available` counts them, and asking for a sequence past them is an error saying how many there
are. `check_token_ids` checks the ids of a range against a model's vocabulary before training on them.
`TokenSequences` is the training view the CALD reference uses (lm/open_instruct/pile_dataset.py): sequences in
index order, the first `seq_length` tokens of each, a contiguous range of them (the training budget, then
held-out ranges after it). Its items are plain indices in order, so SpeechBrain's saveable dataloader resumes
a killed run at the same sample. `SegmentedBatches` cuts the reference's training stream (its passes over
those sequences, in batches) into validation segments, one SpeechBrain epoch each. `write_mmap_tokens` writes
the format (used to build test corpora; the layout is that of Megatron's `MMapIndexedDataset.Index.writer`).
"""

import math
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPES: dict[int, type[np.generic]] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float32,
    7: np.float64,
    8: np.uint16,
}
HEADER_BYTES = len(MAGIC) + 8 + 1 + 8 + 8
PILE_SEQ_LENGTH = 2049  # tokens per sequence of the Pythia pre-shuffled Pile


class MMapFormatError(ValueError):
    """An .idx/.bin pair that is not a valid MMIDIDX corpus (the message names the file and what is wrong)."""


def corpus_paths(prefix: str | os.PathLike) -> tuple[Path, Path]:
    """(<prefix>.idx, <prefix>.bin); a prefix given with either suffix is accepted, as the reference does."""
    prefix = str(prefix)
    if prefix.endswith((".idx", ".bin")):
        prefix = prefix[:-4]
    return Path(prefix + ".idx"), Path(prefix + ".bin")


def dtype_code(dtype: np.dtype | type) -> int:
    """The MMIDIDX code of a numpy dtype."""
    for code, candidate in DTYPES.items():
        if np.dtype(candidate) == np.dtype(dtype):
            return code
    raise ValueError(f"dtype {np.dtype(dtype)} has no MMIDIDX code (known: {sorted(DTYPES.values())})")


def write_mmap_tokens(
    prefix: str | os.PathLike,
    sequences: Sequence[np.ndarray],
    dtype: np.dtype | type = np.uint16,
    doc_idx: Sequence[int] | None = None,
) -> tuple[Path, Path]:
    """Write `sequences` (1-D token arrays) as <prefix>.idx / <prefix>.bin and return both paths.

    doc_idx: the document index (default [0, 1, ..., n], one document per sequence, as Megatron writes for
    pre-packed data). Tokens must fit `dtype` (uint16 for the Pythia Pile).
    """
    idx_path, bin_path = corpus_paths(prefix)
    idx_path.parent.mkdir(parents=True, exist_ok=True)
    info = np.iinfo(dtype) if np.issubdtype(np.dtype(dtype), np.integer) else None
    sizes = np.array([len(s) for s in sequences], dtype=np.int64)
    with open(bin_path, "wb") as out:
        for seq in sequences:
            seq = np.asarray(seq)
            if info is not None and seq.size and (seq.min() < info.min or seq.max() > info.max):
                raise ValueError(f"token ids outside {np.dtype(dtype)} range [{info.min}, {info.max}]")
            out.write(seq.astype(dtype).tobytes(order="C"))
    pointers = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(sizes[:-1] * np.dtype(dtype).itemsize, out=pointers[1:])
    doc_idx = np.arange(len(sizes) + 1) if doc_idx is None else np.asarray(doc_idx)
    with open(idx_path, "wb") as out:
        out.write(MAGIC)
        out.write(struct.pack("<Q", VERSION))
        out.write(struct.pack("<B", dtype_code(dtype)))
        out.write(struct.pack("<Q", len(sizes)))
        out.write(struct.pack("<Q", len(doc_idx)))
        out.write(sizes.astype(np.int32).tobytes(order="C"))
        out.write(pointers.tobytes(order="C"))
        out.write(doc_idx.astype(np.int64).tobytes(order="C"))
    return idx_path, bin_path


class MMapTokens:
    """A memory-mapped MMIDIDX corpus: `len()` sequences, `self[i]` the (read-only) token array of sequence i.

    The header is validated (magic, version, dtype code, table lengths against the .idx size, the last
    sequence's end against the .bin size); any mismatch raises MMapFormatError naming the file.
    """

    def __init__(self, prefix: str | os.PathLike) -> None:
        self.idx_path, self.bin_path = corpus_paths(prefix)
        for path in (self.idx_path, self.bin_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} does not exist: data_prefix must name an MMIDIDX corpus "
                    "<prefix>.idx + <prefix>.bin "
                    "(e.g. /path/pile_pythia/document for document.idx and document.bin)"
                )
        self.dtype, count, docs = self._read_header()
        self._index = np.memmap(self.idx_path, mode="r", dtype=np.uint8)
        self.sizes = np.frombuffer(self._index, dtype=np.int32, count=count, offset=HEADER_BYTES)
        self.pointers = np.frombuffer(
            self._index, dtype=np.int64, count=count, offset=HEADER_BYTES + 4 * count
        )
        self.doc_idx = np.frombuffer(
            self._index, dtype=np.int64, count=docs, offset=HEADER_BYTES + 12 * count
        )
        self._data = np.memmap(self.bin_path, mode="r", dtype=np.uint8)
        self.available = self._sequences_in_bin()
        if count and not self.available:
            raise MMapFormatError(
                f"{self.bin_path} holds {self._data.size} bytes, not even the first sequence of "
                f"{self.idx_path} ({int(self.sizes[0])} tokens from byte {int(self.pointers[0])}): the .bin "
                "is truncated or belongs to another index"
            )

    def _sequences_in_bin(self) -> int:
        """How many leading sequences lie wholly inside the .bin: all of them for a complete corpus, fewer
        for its first shard (pointers increase along the index, as Megatron writes them; a binary search
        reads a few pages of the index, not all of it)."""
        count = int(np.searchsorted(self.pointers, self._data.size, side="left"))
        while count and int(self.pointers[count - 1]) + int(self.sizes[count - 1]) * self.dtype.itemsize > (
            self._data.size
        ):
            count -= 1
        return count

    def describe_range(self, start: int, count: int) -> str | None:
        """Why sequences start .. start + count - 1 cannot be read (past the index or the .bin), or None."""
        if start < 0 or count <= 0 or start + count > len(self):
            return f"{self.idx_path} holds {len(self)} sequences; sequences {start}..{start + count - 1} "
        if start + count > self.available:
            return (
                f"{self.bin_path} holds only the first {self.available} of the {len(self)} sequences of "
                f"{self.idx_path} (a first shard, or a truncated file); sequences "
                f"{start}..{start + count - 1} "
            )
        return None

    def _read_header(self) -> tuple[np.dtype, int, int]:
        size = self.idx_path.stat().st_size
        with open(self.idx_path, "rb") as f:
            header = f.read(HEADER_BYTES)
        if len(header) < HEADER_BYTES or header[: len(MAGIC)] != MAGIC:
            raise MMapFormatError(
                f"{self.idx_path} is not an MMIDIDX index (its first bytes are {header[:9]!r}, expected "
                f"{MAGIC!r}); give the .idx of a Megatron memory-mapped dataset (mmap impl, not "
                "'cached'/'lazy')"
            )
        version, code, count, docs = struct.unpack("<QBQQ", header[len(MAGIC) :])
        if version != VERSION:
            raise MMapFormatError(
                f"{self.idx_path}: MMIDIDX version {version}, only version {VERSION} is supported"
            )
        if code not in DTYPES:
            raise MMapFormatError(f"{self.idx_path}: unknown dtype code {code} (known: {sorted(DTYPES)})")
        expected = HEADER_BYTES + 12 * count + 8 * docs
        if size != expected:
            raise MMapFormatError(
                f"{self.idx_path} holds {size} bytes but its header ({count} sequences, {docs} document "
                f"entries) needs {expected}: the index is truncated or corrupt"
            )
        return np.dtype(DTYPES[code]), count, docs

    def __getstate__(self) -> dict:
        """Pickled (dataloader workers under spawn) as its path: a memmap would pickle its whole content."""
        return {"prefix": str(self.idx_path)[:-4]}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["prefix"])

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"sequence {i} out of range: {self.idx_path} holds {len(self)}")
        if i >= self.available:
            raise IndexError(
                f"sequence {i} is not in {self.bin_path}, which holds the first {self.available}"
            )
        return np.frombuffer(
            self._data, dtype=self.dtype, count=int(self.sizes[i]), offset=int(self.pointers[i])
        )


class TokenSequences(Dataset):
    """Sequences start, start + 1, ..., start + count - 1 of an MMIDIDX corpus, in index order (the
    reference's order: no shuffling, the Pythia Pile is pre-shuffled), each cut to `seq_length` tokens.

    Items are {"id": "seq<i>", "input_ids": LongTensor(seq_length)}. count None: up to the end of the corpus.
    Every selected sequence must hold at least `seq_length` tokens (checked at construction).
    """

    def __init__(
        self,
        corpus: MMapTokens | str | os.PathLike,
        start: int = 0,
        count: int | None = None,
        seq_length: int = PILE_SEQ_LENGTH,
    ) -> None:
        self.corpus = corpus if isinstance(corpus, MMapTokens) else MMapTokens(corpus)
        count = self.corpus.available - start if count is None else int(count)
        problem = self.corpus.describe_range(start, count)
        if problem is not None:
            raise ValueError(
                f"{problem}were asked for: lower max_train_samples + valid_samples + test_samples (or the "
                "range) to fit, or give a larger .bin"
            )
        self.start, self.count, self.seq_length = int(start), count, int(seq_length)
        short = np.flatnonzero(self.corpus.sizes[start : start + count] < seq_length)
        if short.size:
            raise MMapFormatError(
                f"{self.corpus.idx_path}: sequence {start + int(short[0])} has "
                f"{int(self.corpus.sizes[start + short[0]])} tokens, fewer than seq_length={seq_length} "
                f"({short.size} such sequences in the selected range)"
            )

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.count:
            raise IndexError(f"item {i} out of range ({self.count} sequences)")
        index = self.start + i
        tokens = self.corpus[index][: self.seq_length]
        return {"id": f"seq{index}", "input_ids": torch.from_numpy(tokens.astype(np.int64))}


def check_token_ids(data: TokenSequences, vocab_size: int, chunk_tokens: int = 1 << 26) -> None:
    """Every token id of the sequences `data` uses must be below `vocab_size` (the rows of the model's
    embedding): a larger id would stop training mid-run (an IndexError, a device-side assert on GPU) at the
    batch that holds it. Read in chunks of about `chunk_tokens` tokens (uniform, contiguous sequences, as the
    Pythia Pile's, are scanned as one array), so memory stays bounded; MMapFormatError names the sequence."""
    corpus, length = data.corpus, data.seq_length
    per_chunk = max(1, chunk_tokens // length)
    for first in range(data.start, data.start + data.count, per_chunk):
        last = min(first + per_chunk, data.start + data.count)
        pointers, sizes = corpus.pointers[first:last], corpus.sizes[first:last]
        step = length * corpus.dtype.itemsize
        if (sizes == length).all() and (np.diff(pointers) == step).all():
            block = np.frombuffer(
                corpus._data, dtype=corpus.dtype, count=(last - first) * length, offset=int(pointers[0])
            ).reshape(-1, length)
        else:
            block = np.stack([corpus[i][:length] for i in range(first, last)])
        if int(block.max()) < vocab_size and int(block.min()) >= 0:
            continue
        row = int(np.flatnonzero((block >= vocab_size).any(axis=1) | (block < 0).any(axis=1))[0])
        tokens = block[row]
        value = int(tokens[(tokens >= vocab_size) | (tokens < 0)][0])
        raise MMapFormatError(
            f"{corpus.bin_path}: sequence {first + row} holds token id {value}, outside the model's "
            f"vocabulary of {vocab_size} ids (0..{vocab_size - 1}): the corpus was tokenized for another "
            "model. Use the data of pretrained_source's tokenizer (GPT-NeoX-20B for Pythia), or the model "
            "the data was tokenized for."
        )


class SegmentedBatches(Sampler[list[int]]):
    """The reference's training stream cut into segments, one SpeechBrain epoch each (a batch sampler).

    Stream: `passes` passes over items 0 .. num_items - 1 in index order, each pass in batches of
    `batch_size` (the last batch of a pass may be shorter), as the reference's DataLoader (no shuffling) over
    its num_train_epochs. With `world_size` processes, stream batch k goes to rank k % world_size (as
    accelerate shards a data loader); the last stream batches that do not fill a round are left out, so
    that every rank runs the same number of batches. Segment e (SpeechBrain epoch e + 1, chosen with
    `set_epoch`) is the rank's batches e * batches_per_segment .. (e + 1) * batches_per_segment - 1, so the
    segments together replay the stream exactly once, in order; the last one may be shorter.
    """

    shards_itself = True  # CALDBrain's batch-sampler protocol: used unwrapped, set_epoch called every epoch

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        passes: int,
        batches_per_segment: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if min(num_items, batch_size, passes, batches_per_segment, world_size) <= 0:
            raise ValueError(
                "SegmentedBatches: num_items, batch_size, passes, batches_per_segment and world_size must "
                f"be > 0, got {num_items}, {batch_size}, {passes}, {batches_per_segment}, {world_size}"
            )
        self.num_items, self.batch_size = num_items, batch_size
        self.rank, self.world_size = rank, world_size
        self.batches_per_pass = math.ceil(num_items / batch_size)
        self.rank_batches = passes * self.batches_per_pass // world_size
        if self.rank_batches == 0:
            raise ValueError(
                f"SegmentedBatches: {passes} pass(es) of {self.batches_per_pass} batches do not give each "
                f"of {world_size} processes a batch"
            )
        self.batches_per_segment = batches_per_segment
        self.segments = math.ceil(self.rank_batches / batches_per_segment)
        self.segment = 0

    @property
    def epochs(self) -> int:
        """SpeechBrain epochs of the stream: its segments (CALDBrain's batch-sampler protocol)."""
        return self.segments

    def set_epoch(self, epoch: int) -> None:
        """Select the segment of SpeechBrain epoch `epoch` (counted from 1)."""
        if not 1 <= epoch <= self.segments:
            raise ValueError(f"epoch {epoch} is past the last of the stream's {self.segments} segments")
        self.segment = epoch - 1

    def _bounds(self, segment: int) -> range:
        start = segment * self.batches_per_segment
        return range(start, min(start + self.batches_per_segment, self.rank_batches))

    def __len__(self) -> int:
        return len(self._bounds(self.segment))

    def __iter__(self) -> Iterator[list[int]]:
        for local in self._bounds(self.segment):
            batch = (local * self.world_size + self.rank) % self.batches_per_pass
            yield list(range(batch * self.batch_size, min((batch + 1) * self.batch_size, self.num_items)))

    def optimizer_steps(self, grad_accumulation: int) -> int:
        """Optimizer steps over every segment (a segment's incomplete last window does not step: SpeechBrain
        drops it at the epoch's end)."""
        return sum(len(self._bounds(s)) // grad_accumulation for s in range(self.segments))
