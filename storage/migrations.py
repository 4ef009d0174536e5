"""The database schema, as named migrations applied in order and recorded by name.

A migration is never edited once shipped: change the schema by adding a new one below.
"""

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("chorus")


@migrations()
def m001_initial(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE personas (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            tagline TEXT NOT NULL DEFAULT '',
            description TEXT NOT NULL DEFAULT '',
            personality TEXT NOT NULL DEFAULT '',
            scenario TEXT NOT NULL DEFAULT '',
            greeting TEXT NOT NULL DEFAULT '',
            alternate_greetings TEXT NOT NULL DEFAULT '[]',
            example_dialogue TEXT NOT NULL DEFAULT '',
            system_prompt TEXT NOT NULL DEFAULT '',
            avatar TEXT,
            extras TEXT NOT NULL DEFAULT '{}',
            source TEXT NOT NULL DEFAULT 'user',
            adapter_id INTEGER,
            created TEXT NOT NULL,
            updated TEXT NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE adapters (
            id INTEGER PRIMARY KEY,
            persona_id TEXT NOT NULL REFERENCES personas(id) ON DELETE CASCADE,
            version INTEGER NOT NULL,
            folder TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            base_model TEXT NOT NULL DEFAULT '',
            base_fingerprint TEXT NOT NULL DEFAULT '',
            rank INTEGER NOT NULL,
            alpha REAL NOT NULL,
            target_modules TEXT NOT NULL DEFAULT '[]',
            size_bytes INTEGER NOT NULL,
            created TEXT NOT NULL,
            UNIQUE (persona_id, version)
        )
        """
    )
    db.execute(
        """
        CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            title TEXT NOT NULL DEFAULT '',
            leaf_id INTEGER,
            created TEXT NOT NULL,
            updated TEXT NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            parent_id INTEGER REFERENCES messages(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL,
            persona_id TEXT,
            persona_name TEXT,
            meta TEXT NOT NULL DEFAULT '{}',
            created TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("CREATE INDEX idx_messages_conversation ON messages(conversation_id)")
    db.execute("CREATE INDEX idx_messages_parent ON messages(parent_id)")
    db.execute("CREATE INDEX idx_adapters_persona ON adapters(persona_id)")


@migrations()
def m002_training(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE training_runs (
            id TEXT PRIMARY KEY,
            persona_id TEXT,
            export_name TEXT NOT NULL DEFAULT '',
            speaker TEXT NOT NULL,
            config TEXT NOT NULL DEFAULT '{}',
            status TEXT NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'running', 'cancelling', 'cancelled', 'failed', 'finished')),
            step INTEGER NOT NULL DEFAULT 0,
            total_steps INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            adapter_id INTEGER,
            evaluation TEXT NOT NULL DEFAULT '{}',
            pid INTEGER,
            created TEXT NOT NULL,
            updated TEXT NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE training_progress (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES training_runs(id) ON DELETE CASCADE,
            step INTEGER NOT NULL,
            loss REAL,
            eval_loss REAL,
            learning_rate REAL,
            tokens_per_s REAL,
            elapsed_s REAL,
            created TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX idx_training_progress_run ON training_progress(run_id, step)")


@migrations()
def m003_training_owner(db: Database) -> None:
    # Who started (or resumed) a run, from when: between the queued row and the worker's
    # pid (the export is copied first, up to 2 GB) the run is alive while its owner is.
    db.execute("ALTER TABLE training_runs ADD COLUMN owner_host TEXT")
    db.execute("ALTER TABLE training_runs ADD COLUMN owner_pid INTEGER")
    db.execute("ALTER TABLE training_runs ADD COLUMN owned_since TEXT")


@migrations()
def m004_voice_picks(db: Database) -> None:
    # The blind "which sounds like them?" comparison of a finished run: one row per pair
    # (a held-out message, a base + card reply and an adapter reply) the user judged.
    # `pick` is what the user chose, already mapped from the page's left/right to which
    # model wrote it; a pair judged again replaces its row.
    db.execute(
        """
        CREATE TABLE voice_picks (
            run_id TEXT NOT NULL REFERENCES training_runs(id) ON DELETE CASCADE,
            pair INTEGER NOT NULL,
            pick TEXT NOT NULL CHECK (pick IN ('base', 'adapter', 'neither')),
            created TEXT NOT NULL,
            PRIMARY KEY (run_id, pair)
        )
        """
    )


@migrations()
def m005_groups(db: Database) -> None:
    # A group chat: the personas that reply (JSON list of persona ids, in reply order; '[]'
    # for a one-to-one chat) and how they reply to each user message ('turn': one after
    # another, each seeing the replies before it; 'together': all at once from the same
    # prompt; 'mention': only those addressed by @Name, in turn).
    db.execute("ALTER TABLE conversations ADD COLUMN members TEXT NOT NULL DEFAULT '[]'")
    db.execute(
        "ALTER TABLE conversations ADD COLUMN group_mode TEXT NOT NULL DEFAULT 'turn' "
        "CHECK (group_mode IN ('turn', 'together', 'mention'))"
    )
