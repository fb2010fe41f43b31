"""A job's settings flattened to 'group.key' -> value (JSON types): what a run folder and a checkpoint record,
and the form a refusal names them in."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

SETTINGS_FILE = "settings.json"   # where a run folder and a checkpoint record them
# A setting that does not shape what the job has computed so far may change on a resume.
FREE_ON_RESUME = ("train.resume", "train.patience", "train.max_minutes", "threads", "eval.", "export.")


@dataclass(frozen=True)
class Settings:
    values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, config: Any) -> Settings:
        """The settings of a dataclass config."""
        flat: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and value:
                for key, item in value.items():
                    walk(f"{prefix}{key}.", item)
            else:
                flat[prefix[:-1]] = value

        walk("", json.loads(json.dumps(asdict(config), default=str)))
        return cls(flat)

    def shaping(self) -> Settings:
        """Only the settings that shape what is computed (not those free on a resume)."""
        return Settings({k: v for k, v in self.values.items() if not k.startswith(FREE_ON_RESUME)})

    def with_values(self, **values: Any) -> Settings:
        return Settings({**self.values, **values})

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.values, sort_keys=True, default=str).encode()).hexdigest()

    def changed_from(self, recorded: Settings) -> str:
        """The settings (except those free on a resume) whose values differ, as 'key=old (now new)', or ''."""
        keys = [key for key in sorted(set(recorded.values) | set(self.values))
                if not key.startswith(FREE_ON_RESUME) and recorded.values.get(key) != self.values.get(key)]
        return ", ".join(f"{key}={recorded.values.get(key)!r} (now {self.values.get(key)!r})" for key in keys)

    def to_json(self) -> str:
        return json.dumps(self.values, indent=2, sort_keys=True, default=str)
