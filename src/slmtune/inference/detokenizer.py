"""Token ids → text deltas: stop strings (held back while they may still be forming), multi-byte characters
split across tokens, and logprob entries released with the text they belong to."""

from __future__ import annotations

from slmtune.inference.request import Delta, Finished, SequenceState


def holdback(text: str, stops: list[str]) -> int:
    """Characters at the end of ``text`` that could still become a stop string (not to be emitted yet): the longest
    suffix of ``text`` that begins some stop. Only places holding a stop's first character are tried, so the cost
    per token stays near the stops' length, not its square."""
    best = 0
    for s in stops:
        tail = text[len(text) - min(len(s) - 1, len(text)):]
        i = tail.find(s[0]) if s else -1
        while i >= 0 and len(tail) - i > best:
            if s.startswith(tail[i:]):
                best = len(tail) - i
                break
            i = tail.find(s[0], i + 1)
    return best


class Detokenizer:
    """Token ids → text deltas, honouring stop strings and multi-byte characters split across tokens."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eos = {tokenizer.eos_token_id}

    def piece(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)

    def entry(self, token: int, logprob: float, tops: list) -> dict:
        text = self.piece(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8")),
                "top_logprobs": [{"token": (t := self.piece(i)), "logprob": v, "bytes": list(t.encode("utf-8"))}
                                 for i, v in tops]}

    def accept(self, seq: SequenceState, token: int, lp: tuple[float, list] | None) -> list[object]:
        """Add a generated token; returns the events to emit (a Delta and/or a Finished)."""
        p = seq.params
        seq.tokens.append(token)
        out: list[object] = []
        if token in self.eos:
            return self.finish(seq, "stop", out)
        if lp is not None:
            seq.held.append(self.entry(token, *lp))
        seq.text = self.tokenizer.decode(seq.tokens, skip_special_tokens=True)
        text = seq.text
        if p.stop:
            start = max(0, seq.sent - max(map(len, p.stop)))
            hits = [i for i in (text.find(s, start) for s in p.stop) if i >= 0]
            if hits:
                seq.text = text = text[:min(hits)]
                return self.finish(seq, "stop", out)
        if len(seq.tokens) >= p.max_new_tokens:
            return self.finish(seq, "length", out)
        safe = len(text) - holdback(text, p.stop) if p.stop else len(text)
        if text.endswith("\ufffd"):  # the rest of a multi-byte character comes with the next token
            safe = min(safe, len(text) - 1)
        if safe > seq.sent:
            out.append(Delta(seq.choice, text[seq.sent:safe], self._take(seq)))
            seq.sent = safe
        return out

    @staticmethod
    def _take(seq: SequenceState) -> list[dict] | None:
        if not seq.params.logprobs:
            return None
        held, seq.held = seq.held, []
        return held

    def finish(self, seq: SequenceState, reason: str, out: list[object] | None = None) -> list[object]:
        """End ``seq``: the text not emitted yet, then its Finished event (appended to ``out``)."""
        out = [] if out is None else out
        seq.done = True
        if len(seq.text) > seq.sent:
            out.append(Delta(seq.choice, seq.text[seq.sent:], self._take(seq)))
            seq.sent = len(seq.text)
        out.append(Finished(seq.choice, reason, len(seq.tokens), self._take(seq)))
        return out
