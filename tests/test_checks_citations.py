"""The `citations_supported` check: cited sentences against the text of the sources they cite.

The threshold (0.6) rests on EVALUATION below: against three sources, 13 paraphrases of what
they say score 0.68-0.97; 15 claims on the same topics that the sources do not make score
0.30-0.68, 11 of them under 0.6 (one more is caught by the numbers rule); claims on other
topics score under 0.35. Embeddings measure closeness of topic, not truth: a same-topic claim
can pass, which the README says plainly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tools.builtin.summarize import summarize_pages
from troupe.checks import run_checks
from troupe.citations import DEFAULT_THRESHOLD, check_support, cited_claims, source_lines
from troupe.embeddings import SentenceEmbedder, default_embedder
from troupe.models import AcceptanceTest, NodeState, NodeStatus, Task

PAGE = {
    "url": "http://127.0.0.1:9/autoscaling", "title": "Autoscaling", "status": 200,
    "text": "# Autoscaling\n\nRay Serve autoscaling adjusts the number of replicas of a deployment to its load. "
            "The autoscaler watches the number of ongoing requests per replica.\n\nWhen the queue grows beyond "
            "the target, Serve adds replicas up to max_replicas. When traffic falls, replicas are removed after "
            "a downscale delay of 600 seconds by default.",
    "evidence": {"url": "http://127.0.0.1:9/autoscaling", "title": "Autoscaling",
                 "fetched_at": "2025-01-02T03:04:05+00:00", "content_hash": "sha256:" + "a" * 64},
}
SOURCES = "\n\n## Sources\n\n[1] Autoscaling — http://127.0.0.1:9/autoscaling (fetched 2025-01-02T03:04:05+00:00)\n"

SUPPORTED = [  # paraphrases of what the page says
    "Serve changes how many replicas a deployment has according to its load.",
    "The autoscaler tracks ongoing requests for each replica.",
    "Serve scales up to max_replicas when the queue exceeds its target.",
    "After traffic drops, replicas go away once a 600 second downscale delay has passed.",
]
FABRICATED = [  # claims the page does not make
    "The moon is made of cheese.",
    "Kubernetes was developed at Google.",
    "The company was founded in Berlin by three engineers.",
]

# (source text, paraphrases it supports, same-topic claims it does not support)
EVALUATION = [
    (PAGE["text"],
     [*SUPPORTED, "Autoscaling in Ray Serve is driven by request load."],
     ["Replicas are billed per second of CPU time.", "Serve autoscaling requires a Kubernetes cluster.",
      "Each replica runs on a dedicated GPU.", "The autoscaler was added in Ray 1.0.",
      "Replicas are restarted every hour."]),
    ("The Halcyon project secured a budget of 4.2 million euros from the regional fund. Construction of the pilot "
     "plant starts in May, and the first results are expected in the autumn. The project is led by Dr. Maria Lind "
     "of the university's energy department.",
     ["Halcyon obtained 4.2 million euros of funding from the regional fund.", "The pilot plant's construction begins "
      "in May.", "Maria Lind leads the project.", "First results should arrive in autumn."],
     ["The project was cancelled after a funding dispute.", "Halcyon will build three plants in Norway.",
      "The university's energy department has 200 staff.", "The regional fund also financed a new motorway.",
      "The pilot plant uses solar panels."]),
    ("Our basic plan costs 20 dollars per month for small teams. The pro plan costs 50 dollars per month and includes "
     "priority support. Enterprise customers get custom pricing and dedicated support engineers. All plans include a "
     "14-day free trial.",
     ["The basic plan is 20 dollars a month.", "Pro costs 50 dollars monthly and comes with priority support.",
      "Enterprise pricing is custom, with dedicated support engineers.", "Every plan has a 14-day free trial."],
     ["Students get a 50% discount on every plan.", "The company accepts payment in Bitcoin.",
      "Support is only available by phone.", "The basic plan includes unlimited storage.",
      "Prices rise every January."]),
]


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return default_embedder()


def report(*claims: str) -> str:
    return "# Report\n\n" + " ".join(c[:-1] + " [1]." for c in claims) + SOURCES


def test_threshold_evidence(embedder):
    def verdict(text: str, claim: str) -> bool:
        return check_support(f"{claim[:-1]} [1].\n\n[1] S — http://s/1", [{"url": "http://s/1", "text": text}],
                             embedder)[0]

    paraphrases = [verdict(text, c) for text, good, _ in EVALUATION for c in good]
    same_topic = [verdict(text, c) for text, _, bad in EVALUATION for c in bad]
    off_topic = [verdict(text, c) for text, _, _ in EVALUATION for c in FABRICATED]
    assert DEFAULT_THRESHOLD == 0.6
    assert all(paraphrases), paraphrases  # 13 of 13 supported
    assert sum(same_topic) <= 3, same_topic  # 12 of 15 caught (11 by similarity, 1 by its number)
    assert not any(off_topic)


def test_an_extractive_summary_is_supported_verbatim(embedder):
    summary = summarize_pages([PAGE])["markdown"]
    passed, reason = check_support(summary, [PAGE], embedder)
    assert passed, reason
    assert "each supported by its source" in reason and "verbatim" in reason


@pytest.mark.parametrize("claim", SUPPORTED)
def test_a_paraphrase_is_supported(embedder, claim):
    passed, reason = check_support(report(claim), [PAGE], embedder)
    assert passed, reason
    assert "lowest similarity" in reason


@pytest.mark.parametrize("claim", FABRICATED)
def test_a_fabricated_claim_fails_naming_its_marker(embedder, claim):
    passed, reason = check_support(report(SUPPORTED[0], claim), [PAGE], embedder)
    assert not passed
    assert reason.startswith("1 unsupported: [1] does not support") and claim[:-1] in reason
    assert SUPPORTED[0][:-1] not in reason


def test_a_wrong_number_fails_even_when_the_sentence_reads_alike(embedder):
    passed, reason = check_support(report("Replicas are removed after a downscale delay of 30 seconds."),
                                   [PAGE], embedder)
    assert not passed and "its numbers 30 are not in the passages of [1]" in reason
    passed, _ = check_support(report("Replicas are removed after a downscale delay of 30 seconds."),
                              [PAGE], embedder, check_numbers=False)
    assert passed


def test_markers_must_resolve_to_a_source_that_was_fetched(embedder):
    text = "Serve adds replicas up to max_replicas when the queue grows [2]." + SOURCES
    assert check_support(text, [PAGE], embedder) == (
        False, "1 unsupported: [2] is cited but the report lists no source [2]")
    elsewhere = "Serve adds replicas up to max_replicas [1].\n\n[1] Elsewhere — http://127.0.0.1:9/autoscaling/more"
    passed, reason = check_support(elsewhere, [PAGE], embedder)
    assert not passed and "no source record has that URL or doc id" in reason  # a longer URL is another page
    passed, reason = check_support("# Report\n\nNothing is cited here.", [PAGE], embedder)
    assert not passed and "no sentence carries an [n] marker" in reason


def test_each_source_a_sentence_cites_must_support_it(embedder):
    other = {"url": "http://127.0.0.1:9/pricing", "text": "The pro plan costs 50 dollars per month."}
    text = ("Ray Serve autoscaling adjusts the number of replicas of a deployment to its load [1][2].\n\n"
            "[1] Autoscaling — http://127.0.0.1:9/autoscaling\n[2] Pricing — http://127.0.0.1:9/pricing")
    passed, reason = check_support(text, [PAGE, other], embedder)
    assert not passed and "[2] does not support" in reason and "[1] does not" not in reason


def test_claims_and_source_lines_are_parsed_from_markdown():
    text = ("# Title [1]\n\n## Section\n\n- A listed claim holds here [1].\n- Another one, cited after the stop. [2]\n"
            "Uncited sentence here. A **bold** claim with a [link](http://x/y) [3].\n\n"
            "```\nnot a claim [1]\n```\n\n## Sources\n\n[1] One — http://a/1\n- [2] Two — http://a/2\n[3]: Three")
    assert [(c.text, c.markers) for c in cited_claims(text)] == [
        ("A listed claim holds here.", [1]), ("Another one, cited after the stop.", [2]),
        ("A bold claim with a link.", [3])]
    assert source_lines(text) == {1: "One — http://a/1", 2: "Two — http://a/2", 3: "Three"}


def test_documents_resolve_by_doc_id(embedder):
    passages = [{"n": 1, "doc_id": "0123456789abcdef", "source": "report.docx", "location": "p. 2",
                 "text": "The Halcyon project secured a budget of 4.2 million euros in 2021. Work starts in May."},
                {"n": 2, "doc_id": "fedcba9876543210", "source": "minutes.pdf", "location": "p. 1",
                 "text": "The board reviewed the pension policy in March 2023."}]
    text = ("The Halcyon project secured a budget of 4.2 million euros in 2021. [1]\n\n"
            "The board reviewed the pension policy in March 2023. [2]\n\n## Sources\n\n"
            "[1] minutes.pdf, p. 1 (doc fedcba9876543210)\n[2] report.docx, p. 2 (doc 0123456789abcdef)")
    passed, reason = check_support(text, passages, embedder)  # markers swapped: each cites the other document
    assert not passed and "[1] does not support" in reason and "[2] does not support" in reason
    fixed = text.replace("[1] minutes.pdf, p. 1 (doc fedcba9876543210)", "[1] report.docx (doc 0123456789abcdef)")
    fixed = fixed.replace("[2] report.docx, p. 2 (doc 0123456789abcdef)", "[2] minutes.pdf (doc fedcba9876543210)")
    assert check_support(fixed, passages, embedder)[0]


# -- through run_checks, as the verifier runs it -------------------------------------------------


def task_with(nodes: dict[str, NodeState]) -> Task:
    return Task(id="t1", goal="g", nodes=nodes)


class CountingEncoder:
    """Counts what it embeds, to show run_checks uses the encoder it is given."""

    def __init__(self, inner):
        self.inner, self.texts = inner, 0

    def embed(self, texts):
        self.texts += len(texts)
        return self.inner.embed(texts)


def test_run_checks_reads_the_report_and_the_sources_node(tmp_path: Path, embedder):
    (tmp_path / "summary.md").write_text(report(SUPPORTED[0], FABRICATED[0]))
    fetch = NodeState(id="fetch", status=NodeStatus.done, output={"pages": [PAGE]})
    test = AcceptanceTest(id="citations", check_type="citations_supported", threshold=0.5,
                          params={"artifact": "summary.md", "sources_node": "fetch", "sources_field": "pages"})
    encoder = CountingEncoder(embedder)
    [verdict] = run_checks([test], task_with({"fetch": fetch}), tmp_path, encoder=encoder)
    assert not verdict.passed and verdict.test_id == "citations"
    assert "[1] does not support 'The moon is made of cheese.'" in verdict.reason
    assert encoder.texts > 0
    # The verdict carries each citation it checked, for the console to show with its source.
    by_claim = {c["claim"]: c for c in verdict.citations}
    assert by_claim["The moon is made of cheese."]["supported"] is False
    assert any(c["supported"] and c["n"] == 1 and c["source"] and c["passage"] for c in verdict.citations)

    (tmp_path / "summary.md").write_text(summarize_pages([PAGE])["markdown"])
    [verdict] = run_checks([test], task_with({"fetch": fetch}), tmp_path)  # the process-wide model
    assert verdict.passed, verdict.reason


def test_run_checks_names_what_is_missing(tmp_path: Path):
    (tmp_path / "summary.md").write_text(report(SUPPORTED[0]))
    running = NodeState(id="fetch", status=NodeStatus.failed)
    no_sources = AcceptanceTest(id="c1", check_type="citations_supported", params={"artifact": "summary.md"})
    unfinished = AcceptanceTest(id="c2", check_type="citations_supported",
                                params={"artifact": "summary.md", "sources_node": "fetch"})
    judge = AcceptanceTest(id="j", check_type="llm_judge", params={"rubric": "is it good?"})
    verdicts = run_checks([no_sources, unfinished, judge], task_with({"fetch": running}), tmp_path)
    assert [v.passed for v in verdicts] == [False, False, False]
    assert "needs params.sources_node" in verdicts[0].reason
    assert "node 'fetch' did not finish" in verdicts[1].reason
    assert "llm_judge needs the verifier's model" in verdicts[2].reason


def test_sources_from_several_nodes_and_plain_outputs(tmp_path: Path, embedder):
    fetched = {"url": "http://127.0.0.1:9/a", "final_url": "http://127.0.0.1:9/a", "text": PAGE["text"]}
    nodes = {"a": NodeState(id="a", status=NodeStatus.done, output=fetched),
             "b": NodeState(id="b", status=NodeStatus.done, output="The pro plan costs 50 dollars per month.")}
    text = ("Serve adds replicas up to max_replicas when the queue grows beyond the target [1]. "
            "The pro plan costs 50 dollars per month [2].\n\n[1] A — http://127.0.0.1:9/a")
    test = AcceptanceTest(id="c", check_type="citations_supported", params={"node": "r", "sources_node": ["a", "b"]})
    nodes["r"] = NodeState(id="r", status=NodeStatus.done, output=text)
    [verdict] = run_checks([test], task_with(nodes), tmp_path, encoder=embedder)
    assert verdict.passed, verdict.reason  # [2] has no source line: the second record (n=2) is its source


def test_embedder_adapts_a_query_encoder():
    from memory.semantic import QueryEncoder
    from troupe.embeddings import as_embedder

    vectors = as_embedder(QueryEncoder()).embed(["one text", "another"])
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
