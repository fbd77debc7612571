"""Two processes making the semantic store's collections at once: the one that loses the race
finds them made and carries on (a real local Qdrant; the race is staged by a late check)."""

from qdrant_client import QdrantClient

from memory.semantic import QdrantSettings, ensure_schema


class _LateCheck:
    """A client whose first check of each collection answers as it would have a moment earlier."""

    def __init__(self, client: QdrantClient):
        self.client, self.checked = client, set()

    def collection_exists(self, name: str) -> bool:
        if name not in self.checked:
            self.checked.add(name)
            return False
        return self.client.collection_exists(name)

    def __getattr__(self, name: str):
        return getattr(self.client, name)


def test_losing_the_race_to_create_the_collections_is_not_an_error():
    client = QdrantClient(":memory:")
    settings = QdrantSettings(prefix="race")
    ensure_schema(client, settings)  # the other process
    ensure_schema(_LateCheck(client), settings)  # ours: checked before theirs landed
    assert all(client.collection_exists(n) for n in (settings.chunks, settings.documents, settings.files))
