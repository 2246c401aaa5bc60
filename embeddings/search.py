"""Search: by meaning (the query encoded like item text), by words (PostgreSQL full-text), or both
fused by reciprocal rank."""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.conf import settings

from embeddings.content import version_encoder
from embeddings.query_encoder import content_version_for_queries
from embeddings.rules import NO_RULES, RuleSet, answer_rules_apply, rules_resolve
from embeddings.serving import Answer, Recommendation, from_neighbours, model_ref, version_nearest_items
from embeddings.vectors.search import Filters
from recsys.errors import ModelNotReady, ValidationFailed
from recsys.replicas import read_connection, replica_reads
from recsys.rules.ruleset import item_conditions

MODES = ("hybrid", "semantic", "keyword")
RRF_K = 60  # reciprocal rank fusion constant (Cormack et al. 2009)
FUSION_DEPTH = 50  # candidates per mode that the fusion ranks, at least

# Ranking is the work that grows with a query's matches and words: nine words joined by OR over
# 50,000 generated items took 3.5-4.4 s to rank all 44,576 matches on the shared 2-core machine,
# 0.7 s for 10,000 and 0.15 s for 2,000. So at most RECSYS_SEARCH_MAX_RANKED matches are ranked: a
# query that broad finds its best among an arbitrary share of them.
_KEYWORD = """
    SELECT m.id, m.external_id, ts_rank_cd(m.search_vector, q, 32) AS rank
    FROM (
        SELECT i.id, i.external_id, i.search_vector FROM recsys_item i
        WHERE i.search_vector @@ CAST(%(q)s AS tsquery) AND NOT i.is_hidden {category} {conditions}
        LIMIT %(ranked)s
    ) m, CAST(%(q)s AS tsquery) q
    ORDER BY rank DESC, m.external_id LIMIT %(limit)s
"""
# The tsquery and its indexable part: querytree() is 'T' when a branch holds only negations (it would
# match nearly every row, so answering it reads the whole table) and empty when only stop words remain.
_TSQUERY = "SELECT q::text, querytree(q) FROM websearch_to_tsquery('english', %s) q"
# websearch_to_tsquery's syntax: "quoted phrase", -negation, the word OR, anything else a word.
_CLAUSE = re.compile(r'(-?)(?:"([^"]*)"?|([^\s"]+))')
_WORD = re.compile(r"[^\W_]+")  # letters and digits: PostgreSQL's parser splits words at "_" too


@dataclass(frozen=True)
class KeywordQuery:
    """A keyword query within the bounds, with repeated clauses collapsed."""

    text: str  # what websearch_to_tsquery receives
    terms: int  # words, negated or not
    operators: int  # negations, phrases and ORs


def keyword_query_parse(*, query: str) -> KeywordQuery:
    """Bound the work one keyword query can ask for: at most RECSYS_SEARCH_MAX_TERMS words and
    RECSYS_SEARCH_MAX_OPERATORS operators, and at least one word that is not negated (negations
    only exclude; alone they match every item). Raises ValidationFailed past the bounds."""
    clauses = [(m[1], m[2] if m[2] is not None else m[3]) for m in _CLAUSE.finditer(query)]
    clauses = [(sign, text) for sign, text in clauses if _WORD.search(text)]  # punctuation is ignored
    ors = sum(1 for sign, text in clauses if not sign and text.lower() == "or")
    if not ors:  # a plain conjunction: a repeated clause adds work but changes nothing
        clauses = list(dict.fromkeys((sign, text.lower()) for sign, text in clauses))
    operands = [(sign, text) for sign, text in clauses if sign or text.lower() != "or"]
    phrases = sum(1 for sign, text in operands if len(_WORD.findall(text)) > 1)
    parsed = KeywordQuery(
        text=" ".join(_clause_text(sign, text) for sign, text in clauses),
        terms=sum(len(_WORD.findall(text)) for _, text in operands),
        operators=ors + phrases + sum(1 for sign, _ in operands if sign),
    )
    _bounds_check(parsed, positive=any(not sign for sign, _ in operands))
    return parsed


def _clause_text(sign: str, text: str) -> str:
    return f'{sign}"{text}"' if len(_WORD.findall(text)) > 1 else f"{sign}{text}"


def _bounds_check(parsed: KeywordQuery, *, positive: bool) -> None:
    max_terms, max_operators = settings.RECSYS_SEARCH_MAX_TERMS, settings.RECSYS_SEARCH_MAX_OPERATORS
    if parsed.terms > max_terms:
        raise ValidationFailed(
            f"q has {parsed.terms} distinct words; a keyword search takes at most {max_terms}",
            details={"q": [f"at most {max_terms} words"]},
        )
    if parsed.operators > max_operators:
        raise ValidationFailed(
            f'q has {parsed.operators} operators (-negations, "phrases", OR); a keyword search takes '
            f"at most {max_operators}",
            details={"q": [f"at most {max_operators} operators"]},
        )
    if not positive:
        raise ValidationFailed(
            "q needs at least one word to look for: -negations only exclude items from what the other words find",
            details={"q": ["no word to look for"]},
        )


@replica_reads()
def items_search(
    *,
    query: str,
    mode: str,
    limit: int,
    category: str | None = None,
    rules: RuleSet = NO_RULES,
    scenario: str | None = None,
    apply_scenario_rules: bool = True,
) -> Answer:
    """Items matching ``query``; hybrid degrades to keyword while no content model is active.
    Keyword and hybrid queries are bounded first (``keyword_query_parse``); semantic ones are one
    vector query whatever they say. ``rules`` and the scenario's filter (inside each query), boost
    and pin the matches."""
    rules = rules_resolve(rules=rules, scenario=scenario, apply_scenario_rules=apply_scenario_rules)
    answer = _search(query, mode, rules.depth(limit), category, rules)
    return answer_rules_apply(answer, rules, limit=limit, category=category)


def _search(query: str, mode: str, limit: int, category: str | None, rules: RuleSet) -> Answer:
    words = keyword_query_parse(query=query) if mode != "semantic" else None
    content = content_version_for_queries()
    if words is not None and (mode == "keyword" or content is None):
        return Answer(_keyword(words, limit, category, rules), None, "keyword")
    if content is None:
        raise ModelNotReady("semantic search needs a content model, and none is active yet")
    if words is None:
        return Answer(_semantic(content, query, limit, category, rules), model_ref(content), "semantic")
    depth = max(limit * 2, FUSION_DEPTH)
    return Answer(
        _fused([_semantic(content, query, depth, category, rules), _keyword(words, depth, category, rules)], limit),
        model_ref(content),
        "hybrid",
    )


def _semantic(content, query: str, limit: int, category: str | None, rules: RuleSet) -> list[Recommendation]:  # type: ignore[no-untyped-def]
    vector = version_encoder(content, for_queries=True).encode([query])[0]
    if not vector.any():  # no known word (TF-IDF): nothing is near it
        return []
    filters = Filters((), category, rules)
    return from_neighbours(version_nearest_items(content, vector, limit=limit, filters=filters))


def _keyword(words: KeywordQuery, limit: int, category: str | None, rules: RuleSet) -> list[Recommendation]:
    category_sql = "AND i.categories @> ARRAY[%(category)s]::varchar[]" if category else ""
    conditions, condition_params = item_conditions(rules)
    with read_connection().cursor() as cursor:
        cursor.execute(_TSQUERY, [words.text])
        tsquery, indexable = cursor.fetchone()
        if indexable == "T":  # e.g. "the -red": the stop word is dropped, a lone negation is left
            raise ValidationFailed(
                "q needs at least one word to look for that is not a stop word (the, and, ...) in each OR "
                "branch: -negations only exclude items from what the other words find",
                details={"q": ["no word to look for"]},
            )
        if not indexable:  # only stop words: nothing to find
            return []
        params = {"q": tsquery, "limit": limit, "category": category, "ranked": settings.RECSYS_SEARCH_MAX_RANKED}
        cursor.execute(_KEYWORD.format(category=category_sql, conditions=conditions), {**params, **condition_params})
        return [Recommendation(external_id, round(float(rank), 6)) for _, external_id, rank in cursor.fetchall()]


def _fused(rankings: list[list[Recommendation]], limit: int) -> list[Recommendation]:
    """Reciprocal rank fusion: Σ 1 / (k + rank) over the rankings an item appears in."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item.id] = scores.get(item.id, 0.0) + 1.0 / (RRF_K + rank)
    best = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return [Recommendation(item_id, round(score, 6)) for item_id, score in best]
