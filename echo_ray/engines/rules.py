"""The embedded default engine: deterministic standardization with no model.

Per record: clean each raw section into sentences (terminology.py), find each sentence's regions
(the labeler's observation mentions mapped to regions, plus region keywords), then write findings
region by region in the fixed order of method.md:
  * a sentence stating one positive finding and nothing else gets that finding's standard wording,
    qualifiers kept ("There is a right pleural effusion with blunting of the right costophrenic
    angle." -> "Right pleural effusion."; clinical/positives.py); any other sentence keeps its own;
  * a region holding a positive or uncertain finding keeps its sentences, and the key observations
    of that region the report never mentions are stated as negatives ("No pneumothorax.");
  * a region with no positive finding gets its one standard negative ("No pleural effusion or
    pneumothorax."), whether the report never mentions it or words a negative its own way
    ("Normal heart size.", "Heart size is normal." -> "The cardiac silhouette is normal in size."):
    a sentence that only denies findings of such regions is replaced, so one normal finding reads
    the same in every report (a negative a finding elsewhere contradicts, "the costophrenic angles
    are sharp" beside an effusion, is stated without that part: `regions.REGION_NEGATIVE_BESIDE`);
  * positive findings stated only in the impression are carried into their findings region; an
    impression's reading of a finding the findings already state ("Right lower lobe consolidation,
    possibly pneumonia." beside "Right lower lobe consolidation.") stays in the impression: carried,
    it stated the consolidation twice in the findings, in two wordings (`_reads_stated`).
The impression is the cleaned impression, or, when absent, the positive findings sentences (else
"No acute cardiopulmonary abnormality."); a study with no positive finding whose impression only
says so ("Normal chest radiograph.", "No acute cardiopulmonary process.") gets that sentence too.
The result is checked with the same schema validator as LLM output. The rules engine has no
translator (`translates = False`).

Usage:
    standardize_text("Heart size normal. Small L effusion.", "Small left effusion.")
    # {'findings': 'The thorax is symmetric ... Small left effusion. No pneumothorax. ...', 'impression': ...}
"""

from __future__ import annotations

import json
import re

import pyarrow as pa

from echo_ray.clinical.labeler import NEGATIVE, extract_mentions
from echo_ray.clinical.positives import standard_positive
from echo_ray.clinical.regions import OBSERVATION_REGION, REGIONS, negatives_phrase, region_negative, regions_in
from echo_ray.clinical.terminology import sentences
from echo_ray.engines.base import EngineResult, TextEngine, inputs, with_outputs
from echo_ray.engines.prompts import validate_output

NO_ACUTE = "No acute cardiopulmonary abnormality."
_NORMAL_STATEMENT = re.compile(r"\b(?:normal|no acute)\b", re.IGNORECASE)
IMPLIES: dict[str, set[str]] = {
    "Pneumonia": {"Consolidation", "Lung Opacity"},
    "Consolidation": {"Lung Opacity"},
    "Atelectasis": {"Lung Opacity"},
    "Edema": {"Lung Opacity"},
    "Lung Lesion": {"Lung Opacity"},
}


def _analyse(sentence: str) -> tuple[list[str], set[str], set[str]]:
    """(regions in fixed order, observations mentioned, observations positive or uncertain)."""
    mentions = extract_mentions(sentence)
    found = regions_in(sentence, mentions)
    mentioned = {m.observation for m in mentions}
    abnormal = {m.observation for m in mentions if m.status != NEGATIVE}
    return [r for r in REGIONS if r in found], mentioned, abnormal


def _regions_of(observations: set[str]) -> set[str]:
    """The standard regions the given observations belong to."""
    return {OBSERVATION_REGION[o] for o in observations if o in OBSERVATION_REGION}


def _denies_normal_regions(regions: list[str], sentence_abnormal: set[str], abnormal_regions: set[str]) -> bool:
    """True for a sentence that only denies findings of regions with no positive finding anywhere in the
    report: the standard negatives of those regions say the same in one fixed wording."""
    return bool(regions) and not sentence_abnormal and not abnormal_regions.intersection(regions)


def _standard_wording(sents: list[str]) -> list[str]:
    """Each simple positive finding sentence in its standard wording (`standard_positive`), once:
    two wordings of one finding can become the same sentence."""
    return list(dict.fromkeys(standard_positive(s) or s for s in sents))


def _reads_stated(new: set[str], regions: list[str], stated: set[str]) -> bool:
    """True for an impression sentence whose new observations only read findings already stated (a
    pneumonia where the findings describe its consolidation or opacity) in regions already abnormal:
    it adds no finding to the findings section."""
    return all(IMPLIES.get(o, set()) & stated for o in new) and set(regions) <= _regions_of(stated)


def _normal_impression(i_sents: list[str]) -> bool:
    """An impression that only says the study is normal (no finding named as present)."""
    return bool(i_sents) and all(not _analyse(s)[2] and _NORMAL_STATEMENT.search(s) for s in i_sents)


def _findings(f_sents: list[str], i_sents: list[str]) -> tuple[str, list[str]]:
    """Normalized findings text, and its sentences holding positive/uncertain findings."""
    slots: dict[str, list[str]] = {r: [] for r in REGIONS}
    covered: set[str] = set()
    mentioned: set[str] = set()
    abnormal: set[str] = set()
    positives: list[str] = []
    read: set[str] = set()  # the impression's positive/uncertain observations

    other: list[str] = []  # sentences about no standard region (comparison, technique) go last

    def place(sentence: str, regions: list[str]) -> None:
        (slots[regions[0]] if regions else other).append(sentence)
        covered.update(regions)

    analysed = [(s, *_analyse(s)) for s in f_sents]
    for _, _, m, a in analysed:
        mentioned |= m
        abnormal |= a
    findings_abnormal_regions = _regions_of(abnormal)
    for s, regions, _, a in analysed:
        if not _denies_normal_regions(regions, a, findings_abnormal_regions):
            place(s, regions)
        if a:
            positives.append(s)
    for s in i_sents:
        regions, m, a = _analyse(s)
        new = a - abnormal
        mentioned |= m
        read |= new  # carried or not, never denied below
        if new and regions and not _reads_stated(new, regions, abnormal):
            place(s, regions)  # a finding only the impression states: carry it into its region
            abnormal |= new
            positives.append(s)
    abnormal_regions = _regions_of(abnormal)  # now with the impression's carried findings
    for o in abnormal | read:  # a pneumonia is a consolidation: never deny what a finding implies
        mentioned |= IMPLIES.get(o, set())
    out: list[str] = []
    for region in REGIONS:
        out.extend(slots[region])
        region_obs = [o for o, r in OBSERVATION_REGION.items() if r == region]
        if slots[region] or region in covered:
            if region in abnormal_regions:
                neg = negatives_phrase([o for o in region_obs if o not in mentioned])
                if neg:
                    out.append(neg)
        elif region not in abnormal_regions:
            out.append(region_negative(region, abnormal))
    return " ".join(out + other), positives


def standardize_text(raw_findings: str, raw_impression: str) -> dict[str, str]:
    """{"findings", "impression"} for one report (see module doc). Pure and deterministic."""
    f_sents, i_sents = _standard_wording(sentences(raw_findings)), _standard_wording(sentences(raw_impression))
    findings, positives = _findings(f_sents, i_sents)
    if not positives and _normal_impression(i_sents):
        return {"findings": findings, "impression": NO_ACUTE}
    impression = " ".join(i_sents) or " ".join(positives[:3]) or NO_ACUTE
    return {"findings": findings, "impression": impression}


def standardize_one(raw_findings: str, raw_impression: str, require_all_regions: bool = True) -> EngineResult:
    """Run and self-check one record; an exception or invalid result becomes its error."""
    try:
        obj = standardize_text(raw_findings, raw_impression)
    except Exception as e:  # noqa: BLE001  (one bad record must not stop the batch)
        return EngineResult(error=f"rules engine failed: {e.__class__.__name__}: {e}", attempts=1)
    checked, error = validate_output(json.dumps(obj), "standardize", require_all_regions)
    if checked is None:
        return EngineResult(error=f"rules engine output rejected: {error}", attempts=1)
    return EngineResult(checked["findings"], checked["impression"], "", 1)


class _RulesWorker:
    """Ray Data actor: one rules pass per batch."""

    def __init__(self, require_all_regions: bool):
        self.require_all_regions = require_all_regions

    def __call__(self, batch: pa.Table) -> pa.Table:
        results = [standardize_one(f, i, self.require_all_regions) for f, i, _ in inputs(batch)]
        return with_outputs(batch, results)


class RulesEngine(TextEngine):
    kind = "rules"
    translates = False

    def apply(self, ds, task: str):
        import ray.data

        if task != "standardize":
            raise ValueError("the rules engine has no translator; the bilingual stage must skip it")
        return ds.map_batches(
            _RulesWorker,
            fn_constructor_kwargs={"require_all_regions": self.cfg.require_all_regions},
            compute=ray.data.ActorPoolStrategy(size=max(1, self.cfg.num_actors)),
            batch_size=max(1, self.cfg.batch_size),
            batch_format="pyarrow",
            num_cpus=self.cfg.num_cpus_per_actor,
        )

    def describe(self) -> dict:
        return {"kind": self.kind, "model_path": "", "prompt_version": "rules"}
