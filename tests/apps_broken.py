"""An app module whose import fails, as a deploy with a bug would."""

raise RuntimeError("boom: the database URL is not set")
