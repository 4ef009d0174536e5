"""The store facade: one object that opens `chorus.db` under the data root and hands out
the persona, conversation and adapter-file repositories, training runs and their
blind voice picks."""

from __future__ import annotations

from pathlib import Path

from storage.adapter_files import AdapterFiles
from storage.conversations import ConversationRepo
from storage.db import DatabaseHandle
from storage.paths import chorus_home
from storage.personas import PersonaRepo
from storage.training_runs import TrainingRuns
from storage.voice_picks import VoicePicks


class Store:
    def __init__(self, home: Path | None = None):
        self.home = Path(home) if home else chorus_home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.handle = DatabaseHandle(self.home / "chorus.db")
        self.personas = PersonaRepo(self.handle, self.home)
        self.conversations = ConversationRepo(self.handle)
        self.adapters = AdapterFiles(self.handle, self.home)
        self.training = TrainingRuns(self.handle)
        self.voice_picks = VoicePicks(self.handle)
        self.adapters.sweep()

    def current_adapter(self, persona: dict) -> dict | None:
        return self.adapters.get(persona["adapter_id"]) if persona.get("adapter_id") else None

    def delete_persona(self, persona_id: str) -> dict:
        """Delete a persona, its adapter versions and their files; its messages keep its name."""
        row = self.personas.delete(persona_id)
        self.adapters.remove_persona_files(persona_id)
        return row
