"""Byte-level BPE tokenizers as llama.cpp runs them from a GGUF file, so that a file we write is read back exactly as
transformers reads the model, and a file we read is turned back into the tokenizer the model was trained with.

A GGUF file does not carry the pre-tokenizer (how text is cut into words before BPE); it carries a *name*,
``tokenizer.ggml.pre``, and llama.cpp maps each name to a fixed list of regular expressions (``llama-vocab.cpp``).
A wrong name is not an error there: ``"default"`` is valid and silently cuts ``I'd`` into ``I ' d``. llama.cpp's own
converter picks the name by encoding a check text with the Hugging Face tokenizer and looking the hash of the ids up
in a table of known models, so it refuses every model it has not seen (a fine-tuned copy with added tokens, a
tokenizer trained in-process). Here the name is chosen by behaviour instead: each entry of :data:`PRE_TOKENIZERS`
holds llama.cpp's expressions for that name, :class:`LlamaCppBPE` runs them the way llama.cpp does (each expression
splits every piece the previous ones left, matches and the text between them both becoming pieces; then byte-level
BPE by merge rank), and :func:`identify` takes the first name under which the model's own tokenizer and llama.cpp
agree — first on the pieces, which does not depend on the vocabulary, then on the token ids of :data:`CHECK_TEXTS`.
A tokenizer none of them reproduces is refused with the texts that differ.

Only the names whose expressions are listed here can be identified (the families a Llama-architecture export
meets: SmolLM/SmolLM2, GPT-2-style byte-level BPE, Llama 3, Qwen2); the expressions were read from llama.cpp's
``llama-vocab.cpp`` (llama-cpp-python 0.3.36's vendored copy) and are checked against a real ``llama-server`` by
``benchmarks/gguf_tokenizer.py``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from gguf import TokenType

_CONTRACTIONS_CS = r"'s|'t|'re|'ve|'m|'ll|'d"
_CONTRACTIONS_CI = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
GPT2_REGEX = _CONTRACTIONS_CS + r"| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_TAIL = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = _CONTRACTIONS_CI + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}" + _LLAMA3_TAIL
QWEN2_REGEX = _CONTRACTIONS_CI + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}" + _LLAMA3_TAIL


@dataclass(frozen=True)
class PreTokenizer:
    """One ``tokenizer.ggml.pre`` name: the expressions llama.cpp applies for it, in order, and whether whole words
    found in the vocabulary skip the merges (llama.cpp's ``ignore_merges``)."""

    name: str
    regexes: tuple[str, ...]
    ignore_merges: bool = False

    def hf(self):
        """The ``tokenizers`` pre-tokenizer that cuts text the same way (what the model's own tokenizer.json holds)."""
        from tokenizers import Regex, pre_tokenizers

        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=self.regexes[-1] == GPT2_REGEX)
        steps = []
        for rx in self.regexes:
            if rx == r"\p{N}":
                steps.append(pre_tokenizers.Digits(individual_digits=True))
            elif rx != GPT2_REGEX:  # llama.cpp spells (?i:...) out; the original form is the one HF models carry
                original = rx.replace(_CONTRACTIONS_CI, r"(?i:'s|'t|'re|'ve|'m|'ll|'d)")
                steps.append(pre_tokenizers.Split(Regex(original), behavior="isolated"))
        return pre_tokenizers.Sequence([*steps, byte_level]) if steps else byte_level


PRE_TOKENIZERS = {p.name: p for p in (
    PreTokenizer("smollm", (r"\p{N}", GPT2_REGEX)),  # SmolLM, SmolLM2: digits one by one, then GPT-2's rule
    PreTokenizer("gpt-2", (GPT2_REGEX,)),  # GPT-2-style byte-level BPE
    PreTokenizer("llama-bpe", (LLAMA3_REGEX,), ignore_merges=True),  # Llama 3
    PreTokenizer("qwen2", (QWEN2_REGEX,)),  # Qwen2, Qwen2.5
)}

# Written for this check, not taken from llama.cpp's: each line is a case where pre-tokenizers disagree.
CHECK_TEXTS = (
    "I'd say it's the lamp's fault; we'VE tried, they'll see, she'S sure, I'M not, you'Re right, 'tis fine",
    "Don't (really) [maybe] {x} <y> — \"quoted\" 'single' `code`",
    " (leading space and a bracket)  (two spaces)\t(a tab)\n(a newline)",
    "In 2024 we sold 1,234,567 units at $3.50; call 555-0199 at 3 a.m. or +44 20 7946 0958. 7 77 777 7777 77777",
    "v2.0.1 x1=y22+333z 3.14159 1e-9 0x1F ١٢٣ ٤٥ ½ Ⅻ",
    "🚀 rocket 😶\u200d🌫️ fog ✅ done 🦙🦙 two llamas 👍🏽 thumbs",
    "def f(x):\n    return x ** 2  # square\n\n\tif x != 0:\n\t\tprint(f'{x=}')\r\n",
    "Grüße aus Köln, naïve café, Ελληνικά, нещо на български, ¿qué tal?",
    "我想在苹果公司工作 こんにちは世界 안녕하세요 مرحبا بالعالم नमस्ते दुनिया ភាសាខ្មែរ",
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \nend   ",
    "''''''```````\"\"\"\"......!!!!!!?????? ------======= ~~~ ***bold*** __init__",
)


@functools.cache
def _byte_encoder() -> dict[int, str]:
    from gguf.vocab import bytes_to_unicode  # GPT-2's byte-to-character map, as llama.cpp's converter uses it

    return bytes_to_unicode()


def byte_level(piece: str) -> str:
    """A piece's UTF-8 bytes as byte-level BPE's characters (what vocabularies and merges are written in)."""
    byte_map = _byte_encoder()
    return "".join(byte_map[b] for b in piece.encode("utf-8"))


def split(text: str, pre: PreTokenizer) -> list[str]:
    """``text`` cut into pieces as llama.cpp's ``unicode_regex_split`` does for ``pre`` (before the byte mapping)."""
    import regex

    pieces = [text] if text else []
    for rx in pre.regexes:
        pattern, out = regex.compile(rx), []
        for piece in pieces:
            at = 0
            for m in pattern.finditer(piece):
                if m.start() == m.end():
                    continue
                if m.start() > at:
                    out.append(piece[at:m.start()])
                out.append(m.group())
                at = m.end()
            if at < len(piece):
                out.append(piece[at:])
        pieces = out
    return pieces


class LlamaCppBPE:
    """A GGUF "gpt2" tokenizer as llama.cpp applies it: special and user-defined tokens matched in the text first
    (longest first), the rest cut by the pre-tokenizer's expressions, byte-mapped, and merged by rank — the lowest
    rank first, the leftmost of equal ranks; a piece left outside the vocabulary falls back to its bytes."""

    def __init__(self, tokens: list[str], types: list[int], merges: list[str], pre: PreTokenizer):
        self.pre = pre
        self.vocab = {t: i for i, t in enumerate(tokens) if types[i] != TokenType.UNUSED}
        self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges)}
        self.specials = sorted((t for t, i in self.vocab.items() if types[i] in (TokenType.CONTROL,
                                TokenType.USER_DEFINED)), key=len, reverse=True)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for part, special in self._partition(text):
            if special:
                ids.append(self.vocab[part])
                continue
            for piece in split(part, self.pre):
                ids += self._bpe(byte_level(piece))
        return ids

    def _partition(self, text: str):
        at, n = 0, len(text)
        while at < n:
            nxt, hit = n, None
            for tok in self.specials:
                i = text.find(tok, at)
                if i != -1 and (i < nxt or (i == nxt and hit is not None and len(tok) > len(hit))):
                    nxt, hit = i, tok
            if nxt > at:
                yield text[at:nxt], False
            if hit is None:
                return
            yield hit, True
            at = nxt + len(hit)

    def _bpe(self, word: str) -> list[int]:
        if self.pre.ignore_merges and word in self.vocab:
            return [self.vocab[word]]
        symbols = list(word)
        while len(symbols) > 1:
            best = min(((self.ranks[(a, b)], i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))
                        if (a, b) in self.ranks), default=None)
            if best is None:
                break
            i = best[1]
            symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
        ids = []
        for s in symbols:
            if s in self.vocab:
                ids.append(self.vocab[s])
            else:  # llama.cpp: a symbol outside the vocabulary becomes its bytes
                ids += [self.vocab[c] for c in s if c in self.vocab]
        return ids


def looks_special(text: str) -> bool:
    """An added token written as ``<|...|>`` is a control token even where the tokenizer does not mark it special
    (llama.cpp's converter does the same, so the text ``<|im_end|>`` in a prompt is that token in both)."""
    return text.startswith("<|") and text.endswith("|>")


def vocab_entries(tokenizer, size: int) -> tuple[list[str], list[int]]:
    """Token texts and llama.cpp token types for ids ``0..size-1``: ids without a token are ``[PAD<i>]``, unused;
    added tokens are control tokens when special (or written like one), else user-defined; the rest normal."""
    vocab = tokenizer.get_vocab()
    added = tokenizer.added_tokens_decoder
    tokens, types = [f"[PAD{i}]" for i in range(size)], [TokenType.UNUSED] * size
    for text, idx in vocab.items():
        tokens[idx] = text
        if idx in added:
            types[idx] = TokenType.CONTROL if added[idx].special or looks_special(text) else TokenType.USER_DEFINED
        else:
            types[idx] = TokenType.NORMAL
    return tokens, types


@dataclass
class Mismatch:
    text: str
    ours: list
    theirs: list

    def __str__(self) -> str:
        i = next((k for k, (a, b) in enumerate(zip(self.ours, self.theirs)) if a != b),
                 min(len(self.ours), len(self.theirs)))
        return (f"{self.text[:60]!r}: from piece {i}, transformers {self.ours[i:i + 4]} vs llama.cpp "
                f"{self.theirs[i:i + 4]}")


class Unidentified(ValueError):
    """No ``tokenizer.ggml.pre`` name makes llama.cpp tokenize as the model's own tokenizer does."""


def hf_pieces(tokenizer, text: str) -> list[str] | None:
    """The Hugging Face tokenizer's pre-tokenizer pieces (byte-mapped), or None where it has no pre-tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.pre_tokenizer is None or backend.normalizer is not None:
        return None
    return [p for p, _ in backend.pre_tokenizer.pre_tokenize_str(text)]


def llama_pieces(text: str, pre: PreTokenizer) -> list[str]:
    return [byte_level(p) for p in split(text, pre)]


def compare(tokenizer, bpe: LlamaCppBPE, texts=CHECK_TEXTS) -> list[Mismatch]:
    """The texts on which llama.cpp's ids differ from the Hugging Face tokenizer's (special tokens parsed, nothing
    added: what a chat-templated prompt goes through in both)."""
    out = []
    for text in texts:
        ours = tokenizer(text, add_special_tokens=False)["input_ids"]
        theirs = bpe.encode(text)
        if ours != theirs:
            out.append(Mismatch(text, tokenizer.convert_ids_to_tokens(ours), tokenizer.convert_ids_to_tokens(theirs)))
    return out


def identify(tokenizer, tokens: list[str], types: list[int], merges: list[str], texts=CHECK_TEXTS) -> PreTokenizer:
    """The first :data:`PRE_TOKENIZERS` entry under which llama.cpp cuts ``texts`` into the same pieces as the
    model's tokenizer (any vocabulary) and gives the same ids; where the tokenizer's pieces cannot be read, the first
    that gives the same ids. Raises :class:`Unidentified` with each candidate's first difference otherwise."""
    theirs = {t: hf_pieces(tokenizer, t) for t in texts}
    tried = []
    for pre in PRE_TOKENIZERS.values():
        cut = next(((t, ours) for t, ours in theirs.items() if ours is not None and ours != llama_pieces(t, pre)),
                   None)
        if cut is not None:
            tried.append(f"{pre.name}: {Mismatch(cut[0], cut[1], llama_pieces(cut[0], pre))}")
            continue
        bad = compare(tokenizer, LlamaCppBPE(tokens, types, merges, pre), texts)
        if not bad:
            return pre
        tried.append(f"{pre.name}: {bad[0]}")
    raise Unidentified("no llama.cpp pre-tokenizer reproduces this tokenizer (" + "; ".join(tried) + ")")
