"""Keep unstructured off the network, in whichever process (driver or Ray worker) partitions.

unstructured phones home on import and on every partition call, and at first use tries to
download the spaCy model `en_core_web_sm` from GitHub. With no internet the download fails (or
hangs on a slow DNS timeout) inside a Ray worker, which is why this runs in the worker itself.
NLTK is no longer used by unstructured (>= 0.18 replaced it with spaCy), so it needs no data.
"""

from __future__ import annotations

import logging
import os

__all__ = ["disable_telemetry", "ensure_offline_nlp"]

log = logging.getLogger(__name__)

_TELEMETRY_OFF = {
    "DO_NOT_TRACK": "1",  # unstructured's import-time ping and per-partition events
    "SCARF_NO_ANALYTICS": "true",
    "UNSTRUCTURED_DISABLE_NOTICE": "1",  # the "commercial offering" banner on every process
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}

_pipeline: str | None = None


def disable_telemetry() -> None:
    """Must run before `unstructured` is first imported in the process."""
    for key, value in _TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


def ensure_offline_nlp() -> str:
    """Make unstructured's sentence/POS helpers work offline; returns the pipeline used.

    The real model is used when it is installed (pip install of the en_core_web_sm wheel);
    otherwise `spacy.blank("en")` with a rule-based sentencizer. The blank pipeline assigns
    no part-of-speech tags, so a one-sentence paragraph without a verb tag is classified as a
    title rather than narrative text; multi-sentence paragraphs are unaffected.
    """
    global _pipeline
    if _pipeline is not None:
        return _pipeline
    disable_telemetry()
    import spacy
    from unstructured.nlp import tokenize

    try:
        nlp = spacy.load("en_core_web_sm", exclude=["ner", "lemmatizer", "attribute_ruler"])
        name = "en_core_web_sm"
    except OSError:
        nlp = spacy.blank("en")
        nlp.add_pipe("sentencizer")
        name = "blank:en+sentencizer"
        log.info("spaCy model en_core_web_sm is not installed; using a blank English pipeline")
    # unstructured looks the loader up through the module on every call, so replacing the
    # module attribute (its lru_cache included) is enough and never triggers the download.
    tokenize._get_nlp = lambda: nlp
    _pipeline = name
    return name
