"""Open Med-VQA answers judged by an LLM through any OpenAI-compatible endpoint.

Verdicts are cached on disk (a rerun costs nothing); a junk or failed verdict is retried, then
counted and reported as unjudged, never scored. The API key comes from the environment and is
never logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from openai import OpenAI, OpenAIError

log = logging.getLogger(__name__)

PROMPT = (
    "You grade answers to medical visual questions. Question: {question}\n"
    "Reference answer: {answer}\nCandidate answer: {prediction}\n"
    "Does the candidate answer mean the same as the reference answer? "
    "Reply with exactly one word: yes or no."
)


@dataclass(frozen=True)
class JudgeConfig:
    """Where the judge runs; the key is read from the environment variable `api_key_env`."""

    model: str
    base_url: str
    cache_path: Path
    api_key_env: str = "OPENAI_API_KEY"
    attempts: int = 3  # per verdict, junk and failures alike
    timeout_s: float = 30.0


class LLMJudge:
    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        self._client = OpenAI(
            api_key=os.environ.get(config.api_key_env, "unset"),
            base_url=config.base_url,
            timeout=config.timeout_s,
            max_retries=0,
        )
        self._cache: dict[str, bool] = {}
        if config.cache_path.is_file():
            for line in config.cache_path.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                self._cache[entry["key"]] = bool(entry["verdict"])
        self.failures = 0
        self.calls = 0

    def _key(self, question: str, answer: str, prediction: str) -> str:
        text = json.dumps([self.config.model, question, answer, prediction])
        return hashlib.sha256(text.encode()).hexdigest()

    def verdict(self, question: str, answer: str, prediction: str) -> bool | None:
        """True / False, or None when no valid verdict came in `attempts` tries."""
        key = self._key(question, answer, prediction)
        if key in self._cache:
            return self._cache[key]
        content = PROMPT.format(question=question, answer=answer, prediction=prediction)
        for attempt in range(1, self.config.attempts + 1):
            self.calls += 1
            try:
                reply = self._client.chat.completions.create(
                    model=self.config.model,
                    temperature=0,
                    max_tokens=3,
                    messages=[{"role": "user", "content": content}],
                )
                word = (reply.choices[0].message.content or "").strip().lower().strip(".!")
            except OpenAIError as exc:
                log.warning("judge call failed (attempt %d): %s", attempt, type(exc).__name__)
                continue
            if word in ("yes", "no"):
                self._remember(key, word == "yes")
                return word == "yes"
            log.warning("judge gave no verdict (attempt %d): %.40r", attempt, word)
        self.failures += 1
        return None

    def _remember(self, key: str, verdict: bool) -> None:
        self._cache[key] = verdict
        self.config.cache_path.parent.mkdir(parents=True, exist_ok=True)
        with self.config.cache_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"key": key, "verdict": verdict}) + "\n")
