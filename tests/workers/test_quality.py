"""Quality checks: each reason fires on a planted example and stays quiet on good answers."""

from typing import Any

import pytest

from schemas.curation import QualitySettings
from schemas.examples import GeneratedItem, QualityVerdict, Reason
from workers.curate.quality import (
    CutOffCheck,
    ErrorCheck,
    GenericFillerCheck,
    IgnoresSkillsCheck,
    IncompleteCheck,
    LengthTracker,
    LowNoveltyCheck,
    NoSkillShownCheck,
    NotARequestCheck,
    OffTopicCheck,
    OneParagraphCheck,
    PlaceholderCheck,
    QualityFilter,
    RefusalCheck,
    RestatesInstructionCheck,
    VaguenessCheck,
    normalise_text,
)

INSTRUCTION = (
    "I run a small bakery in Leeds and my sourdough loaves keep coming out dense and gummy in the middle, "
    "even though the crust looks fine. My starter doubles in about six hours, I bake at 230C in a Dutch oven "
    "and proof overnight in the fridge. What should I change first, and how will I know it worked?"
)

GOOD_ANSWER = (
    "A dense, gummy crumb with a good-looking crust almost always means the dough was under-fermented or "
    "the loaf was cut before it finished setting, so change one variable at a time, starting with bulk "
    "fermentation. A starter that doubles in six hours is on the slow side, so your bulk probably needs "
    "longer than the recipe says: aim for a 50 to 75 percent rise in the tub, with a domed, jiggly surface "
    "and bubbles on the sides, rather than watching the clock. If your kitchen is below 24C, move the tub "
    "somewhere warmer or extend the bulk by an hour. Second, an overnight cold proof cannot rescue a short "
    "bulk; it slows everything down, so the loaf goes into the oven under-proofed and the centre never "
    "opens up. Third, check the bake itself: at 230C in a Dutch oven, take the lid off after 20 minutes "
    "and bake until the internal temperature reaches 96 to 98C, which an instant-read thermometer will "
    "tell you. Finally, let the loaf cool for at least an hour before slicing, because the crumb is still "
    "cooking from residual heat. You will know the bulk fix worked when the next loaf has an open, even "
    "crumb that springs back when pressed, and no shiny, wet band just above the base. Keep notes on dough "
    "temperature and rise for each batch so you can repeat it."
)

# papers.md §A shirkers: a lazy, generic, padded answer, and the instruction re-asked.
LAZY_ANSWER = (
    "That's a great question! There are many factors to consider when it comes to this. It really depends "
    "on your specific situation and needs. In general, it is important to do your research and think "
    "carefully before making any changes. Everyone is different, so what works for one person may not work "
    "for another. You may also want to consult with an expert who can give you personalised advice. "
    "Ultimately, the best approach is the one that works for you. I hope this helps! Let me know if you "
    "have any other questions."
)
LAZY_ANSWER_2 = (
    "Improving your bread is a journey that takes time and patience. Baking is both an art and a science, "
    "and there are many different elements that can influence the final result. It's a good idea to "
    "experiment with different approaches and see what works best for you. Small adjustments can make a big "
    "difference, so don't be afraid to try new things. Remember that even professional bakers have bad days, "
    "and every loaf is a learning opportunity. With practice and persistence, you will see improvement over "
    "time. Keep going, stay motivated, and enjoy the process!"
)
REASKED = INSTRUCTION + " Answer in one paragraph."

# More normal answers that must pass every check.
OTHER_GOOD = [
    (
        "Write a short cover letter opening for a junior data analyst applying to a hospital trust.",
        "Dear Hiring Manager, I am writing to apply for the Junior Data Analyst role at Northgate Hospital "
        "Trust. During my statistics degree I cleaned and analysed two years of outpatient appointment "
        "data for a university project, cutting the no-show forecast error by a third with a simple "
        "logistic model. I would welcome the chance to bring the same care to your waiting-list and "
        "bed-occupancy reporting, and I am comfortable with SQL, Python and Power BI.",
    ),
    (
        "Explain to a new manager how to give critical feedback to a senior engineer without damaging trust.",
        "In general, it is important to separate the work from the person, so start with one concrete "
        "example: the last two pull requests merged without tests, and the on-call rota paid for it twice. "
        "Ask for their view before proposing anything; senior engineers often know exactly why it "
        "happened, such as deadline pressure you created. Agree on one change together, like a rule that "
        "reviews block on missing tests, and check in after a sprint. Ultimately, the best feedback is "
        "specific, private and followed up. I hope this helps, and let me know if you have any other "
        "questions about the first conversation.",
    ),
    (
        "My sister failed her driving test for the second time today and is upset. What can I text her?",
        "Something like: 'I'm so sorry about the test today, I know how much you wanted it. Failing twice "
        "doesn't mean you're a bad driver; lots of people pass on the third go, and examiners see nerves all "
        "the time. Take tonight off, be patient with yourself, and when you're ready, ask your instructor "
        "which mistakes the examiner marked so the next lesson targets them. Keep going, you'll get there, "
        "and I'll buy the celebration pizza when you pass.' Keep it short and warm, and don't offer driving "
        "advice unless she asks for it.",
    ),
    (
        "Write a four-line poem about the first frost of autumn in a city park.",
        "The benches wear a silver coat at dawn,\nthe pond has learned to hold its breath in glass,\na "
        "jogger writes white sentences in air,\nand every leaf is keeping one cold star.",
    ),
    (
        "My Python script reads a 2 GB CSV with pandas and runs out of memory. What can I do?",
        "Read the file in chunks instead of all at once: pd.read_csv(path, chunksize=100_000) returns an "
        "iterator of DataFrames, so you can aggregate each chunk and combine the partial results. Also "
        "pass usecols to load only the columns you need and dtype to store integers as int32 and repeated "
        "strings as category, which often cuts memory by half or more. If you need the whole table, "
        "convert it once to Parquet and query it with DuckDB or Polars, which stream data from disk "
        "instead of holding it in RAM.",
    ),
]


def item(instruction: str = INSTRUCTION, output: str = GOOD_ANSWER, **fields: object) -> GeneratedItem:
    return GeneratedItem.model_validate(
        {"job_id": "job-q", "index": 0, "instruction": instruction, "output": output, **fields}
    )


def evaluate(it: GeneratedItem, **settings: object) -> QualityVerdict:
    return QualityFilter(QualitySettings.model_validate(settings)).verdict(it)


def test_normalise_text() -> None:
    assert normalise_text("  Hello,\tWORLD!  It\u2019s   \ufb01ne\u2026 ") == "hello world its fine"
    assert normalise_text("f(x) = x*2 - 1.") == "f(x) = x*2 - 1"


def test_good_answer_is_accepted() -> None:
    verdict = evaluate(item())
    assert verdict == QualityVerdict(accepted=True, reasons=[], detail="")


@pytest.mark.parametrize(("instruction", "output"), OTHER_GOOD)
def test_other_good_answers_are_accepted(instruction: str, output: str) -> None:
    assert evaluate(item(instruction, output), min_response_words=20).accepted


@pytest.mark.parametrize("error", [Reason.UNPARSEABLE, Reason.LLM_ERROR])
def test_error_is_the_only_reason(error: Reason) -> None:
    verdict = evaluate(item(output="", error=error, error_detail="no 'Response:' section"))
    assert verdict.reasons == [error]
    assert not verdict.accepted
    assert "no 'Response:' section" in verdict.detail


def test_cut_off() -> None:
    verdict = evaluate(item(finish_reason="length"))
    assert verdict.reasons == [Reason.CUT_OFF]
    assert evaluate(item(finish_reason="stop")).accepted


def test_disabled_still_rejects_errors_and_cut_offs() -> None:
    assert evaluate(item(output="ok"), enabled=False).accepted
    assert evaluate(item(output="", error=Reason.UNPARSEABLE), enabled=False).reasons == [Reason.UNPARSEABLE]
    assert evaluate(item(finish_reason="length"), enabled=False).reasons == [Reason.CUT_OFF]
    assert evaluate(item(output=LAZY_ANSWER), enabled=False).accepted


@pytest.mark.parametrize("output", ["", "   ", "\n\t", "...", "!!"])
def test_empty_response(output: str) -> None:
    assert evaluate(item(output=output)).reasons == [Reason.EMPTY_RESPONSE]


def test_too_short_response_and_instruction() -> None:
    assert evaluate(item(output="Bake it longer and let it cool.")).reasons[0] is Reason.TOO_SHORT
    assert evaluate(item(instruction="Fix my bread?")).reasons == [Reason.TOO_SHORT]
    assert evaluate(item(output="Bake it longer.", instruction="Fix bread"), min_response_words=1).reasons == [
        Reason.TOO_SHORT
    ]
    # Thresholds come from the settings (the prompts recipe defaults to 1 and 0).
    assert evaluate(item("Hi", "Hello!"), min_response_words=1, min_instruction_words=0).accepted


@pytest.mark.parametrize(
    "output",
    [
        "I'm sorry, but I can't help with that request.",
        "I\u2019m sorry, but I can\u2019t.",
        "I cannot help with this because it involves food safety regulations I am not qualified to assess.",
        "As an AI language model, I do not have hands, so I have never baked bread. " + GOOD_ANSWER,
        "Unfortunately, I am unable to provide advice on commercial baking. " + GOOD_ANSWER,
        "I can't assist with that.",
        "I must respectfully decline to answer this question.",
        "I apologize, but that request goes against my guidelines.",
        "Sure. Hmm, on reflection this is outside what I can do. I won't provide that. I will not help with "
        "this request under any circumstances.",
    ],
)
def test_refusals(output: str) -> None:
    assert RefusalCheck().check(item(output=output)) is Reason.REFUSAL
    assert Reason.REFUSAL in evaluate(item(output=output)).reasons


def test_refusal_making_up_most_of_a_short_response() -> None:
    output = (
        "Thank you for the detailed description of your bakery in Leeds, your starter that doubles in six hours, "
        "your Dutch oven at 230C and the overnight proof in the fridge. Unfortunately I cannot help with this "
        "request. I will not provide commercial baking advice, and I "
        "cannot assist with food business questions of any kind. I'm not able to advise on commercial ovens or "
        "proofing schedules either, and I won't provide any other baking guidance."
    )
    assert output.lower().index("i cannot help") > RefusalCheck.START_CHARS
    assert RefusalCheck().check(item(output=output)) is Reason.REFUSAL


@pytest.mark.parametrize(
    "output",
    [
        GOOD_ANSWER + " I cannot help noticing that many bakers skip the cooling step. If a customer asks "
        "you to slice a hot loaf, say: 'I'm sorry, but I can't do that until it has cooled.'",
        "I cannot stress enough how much the bulk rise matters. " + GOOD_ANSWER,
        "I can't help but smile when a loaf finally opens up. " + GOOD_ANSWER,
        GOOD_ANSWER + " As an AI language model I would add one thing: write the times down.",
    ],
)
def test_refusal_phrases_in_legit_answers_are_not_flagged(output: str) -> None:
    assert RefusalCheck().check(item(output=output)) is None
    assert evaluate(item(output=output)).accepted


def test_restated_instruction_shirker() -> None:
    verdict = evaluate(item(output=REASKED))
    assert verdict.reasons[0] is Reason.RESTATES_INSTRUCTION
    assert not verdict.accepted


def test_restated_instruction_variants() -> None:
    check = RestatesInstructionCheck(max_similarity=0.8)
    short_instruction = "Give three tips for a first job interview at a bank."
    assert check.check(item(short_instruction, "Answer in one paragraph: " + short_instruction)) is not None
    assert check.check(item(short_instruction, short_instruction + " Please answer briefly in one paragraph."))
    # The instruction's words shuffled: set Jaccard 1.0.
    shuffled = " ".join(reversed(INSTRUCTION.split()))
    assert check.check(item(output=shuffled)) is Reason.RESTATES_INSTRUCTION
    # A fragment of the instruction: contained in it.
    fragment = " ".join(INSTRUCTION.split()[10:40])
    assert check.check(item(output=fragment)) is Reason.RESTATES_INSTRUCTION


def test_answer_that_quotes_the_question_first_is_not_a_restatement() -> None:
    output = f"You asked: {INSTRUCTION} Here is what I would do. {GOOD_ANSWER}"
    assert RestatesInstructionCheck(0.8).check(item(output=output)) is None
    # Short factual answers reuse the question's words without restating it.
    factual = item("What is the capital of France?", "The capital of France is Paris.")
    assert RestatesInstructionCheck(0.8).check(factual) is None


def test_lazy_generic_shirker() -> None:
    verdict = evaluate(item(output=LAZY_ANSWER))
    assert verdict.reasons[0] is Reason.TOO_SHORT and Reason.VAGUE in verdict.reasons
    assert "generic filler" in verdict.detail
    assert GenericFillerCheck().check(item(output=LAZY_ANSWER)) is Reason.TOO_SHORT


def test_natural_lazy_generic_shirker() -> None:
    verdict = evaluate(item(output=LAZY_ANSWER_2))
    assert verdict.reasons[0] is Reason.TOO_SHORT and Reason.VAGUE in verdict.reasons


def test_generic_filler_needs_low_overlap() -> None:
    # The same stock phrases wrapped around the specifics of the question are a normal answer.
    specific = (
        LAZY_ANSWER + " For your sourdough, lengthen the bulk rise until the dough grows by half, proof less "
        "overnight in the fridge, and check the middle reaches 96C in the Dutch oven."
    )
    assert GenericFillerCheck().check(item(output=specific)) is None


def test_error_check_reports_the_item_error() -> None:
    assert ErrorCheck().check(item(error=Reason.LLM_ERROR)) is Reason.LLM_ERROR
    assert CutOffCheck().check(item()) is None


def test_several_reasons_primary_first_and_stats() -> None:
    quality = QualityFilter(QualitySettings())
    verdict = quality.verdict(item(output="I'm sorry, but I can't help with that.", finish_reason="length"))
    assert verdict.reasons == [Reason.CUT_OFF, Reason.REFUSAL, Reason.TOO_SHORT, Reason.ONE_PARAGRAPH]
    quality.verdict(item())
    assert quality.stats == {"total": 2, "accepted": 1, "cut_off": 1}


def test_degenerate_repetition_is_rejected_but_normal_prose_is_not() -> None:
    looping = "Your query averages within each customer, not across orders. " + "The answer is: " * 25
    verdict = evaluate(item(output=looping))
    assert not verdict.accepted and verdict.reasons[0] is Reason.REPETITIVE
    assert "distinct" in verdict.detail
    assert evaluate(item()).accepted  # the long, normal answer repeats few 3-grams
    listy = (
        "Step 1: check the value of cell B2 against the budget total. Step 2: check the value of cell C2 "
        "against last month. Step 3: check the formula in D2 copies down without shifting the range. Step 4: "
        "check the totals row sums the right columns. Step 5: check the currency format of every cell."
    )
    assert Reason.REPETITIVE not in evaluate(item(output=listy)).reasons


# --- shirker checks without an LLM (issue 8) ---------------------------------------------------------------


def test_normalise_text_unifies_dash_and_quote_variants() -> None:
    assert normalise_text("Pre\u2013war \u201cmodern\u201d art \u2014 1920\u22121930") == normalise_text(
        'Pre-war "modern" art - 1920-1930'
    )
    assert normalise_text("It\u2019s \u2018fine\u2019") == normalise_text("It's 'fine'") == "its fine"
    assert normalise_text("x\u2212y") == "x-y"  # the minus sign is a symbol: mapped, not left as another char


@pytest.mark.parametrize(
    "output",
    [
        "I\u2019m not able to help with that request.",
        "I'm unable to provide advice on commercial baking.",
        "Sorry, this isn't something I can help with.",
        "That\u2019s not something I can assist with, but I'd be happy to talk about something else.",
        "I'm afraid I won't be able to write that for you.",
        "Unfortunately, I can't.",
        "I'd rather not weigh in on this one; it's beyond my expertise to answer reliably.",
        "Thanks for the question! That falls outside what I can do, so I have to decline.",
    ],
)
def test_refusals_with_contractions(output: str) -> None:
    assert RefusalCheck().check(item(output=output)) is Reason.REFUSAL


def test_contractions_in_good_answers_are_not_refusals() -> None:
    output = "I can't stress enough that you shouldn't cut the loaf early. " + GOOD_ANSWER
    assert RefusalCheck().check(item(output=output)) is None


@pytest.mark.parametrize(
    "output",
    [
        GOOD_ANSWER[: GOOD_ANSWER.index(" rather than watching")],  # mid-sentence, finish_reason "stop"
        GOOD_ANSWER + "\n\nA few more checks:\n\n1. Dough temperature\n2.",  # dangling list marker
        GOOD_ANSWER + "\n\nLog it like this:\n\n```python\nlog = {'bulk_hours': 5,",  # unclosed code fence
        GOOD_ANSWER + "\n\n- **Steam: the first twenty minutes with the lid",  # unclosed bold, list item
        GOOD_ANSWER + " Finally, the crumb sets best when the loaf is",
        GOOD_ANSWER + "\n\nThe three things to change, in order:",
    ],
)
def test_incomplete_endings(output: str) -> None:
    it = item(output=output, finish_reason="stop")
    assert IncompleteCheck().check(it) is Reason.INCOMPLETE
    assert evaluate(it).reasons[0] is Reason.INCOMPLETE


@pytest.mark.parametrize(
    "output",
    [
        GOOD_ANSWER,
        GOOD_ANSWER + "\n\n| step | time |\n|---|---|\n| bulk | 5 h |",  # a table row ends bare
        GOOD_ANSWER + "\n\n- Starter: doubles in 6 h\n- Oven: 230C",  # short list items end bare
        GOOD_ANSWER + "\n\nHappy baking,\nSam Jones",  # sign-off
        GOOD_ANSWER + "\n\n```python\nprint('done')\n```",
        GOOD_ANSWER + " (see the chart above)",
        GOOD_ANSWER + " \U0001f35e",
    ],
)
def test_complete_endings(output: str) -> None:
    assert IncompleteCheck().check(item(output=output)) is None


OFF_TOPIC_ANSWER = (
    "Read the file in chunks instead of all at once: pd.read_csv(path, chunksize=100_000) returns an iterator of "
    "DataFrames, so you can aggregate each chunk and combine the partial results. Also pass usecols to load only "
    "the columns you need and dtype to store integers as int32 and repeated strings as category, which often cuts "
    "memory by half or more. If you need the whole table, convert it once to Parquet and query it with DuckDB."
)


def test_off_topic_answer() -> None:
    check = OffTopicCheck(min_overlap=0.25, min_instruction_words=20)
    assert check.check(item(output=OFF_TOPIC_ANSWER)) is Reason.OFF_TOPIC
    assert check.check(item()) is None
    # Short prompts are not judged: "Say 5." leaves nothing to compare.
    assert check.check(item("Tell me a fun fact about memory.", OFF_TOPIC_ANSWER)) is None
    # Code (few function words) is not judged either: it may answer without repeating the question's words.
    code = "```python\n" + "\n".join(f"df_{i} = pd.read_parquet(p_{i}, columns=cols)" for i in range(12)) + "\n```"
    assert check.check(item(output=code)) is None


def test_paraphrased_restatement_has_low_novelty() -> None:
    paraphrase = (
        "So your sourdough loaves from your small Leeds bakery keep coming out dense and gummy in the middle while "
        "the crust looks fine; your starter doubles in six hours, you bake at 230C in a Dutch oven and proof "
        "overnight in the fridge. You would like to know what to change first and how you will know it worked."
    )
    check = LowNoveltyCheck(min_novelty=0.35)
    assert check.check(item(output=paraphrase)) is Reason.LOW_NOVELTY
    assert evaluate(item(output=paraphrase)).reasons[0] in (Reason.LOW_NOVELTY, Reason.RESTATES_INSTRUCTION)
    reask = "What should you change first about the dense, gummy sourdough, and how will you know? Answer briefly."
    assert check.check(item(output=reask)) is Reason.LOW_NOVELTY
    assert check.check(item()) is None


LONG_LAZY_ANSWER = "\n\n".join(
    [
        "Thank you for this thoughtful question about your bakery. There are many different aspects to consider, "
        "and every situation is unique, so it is important to think carefully about the overall picture.",
        "In general, the best approach depends on various factors, and what works well for one baker might not "
        "necessarily work for another. It is essential to stay flexible and open to new ideas.",
        "Ultimately, baking is a journey, and with patience, persistence and a positive mindset you will likely see "
        "meaningful improvements over time. Keep experimenting and enjoy the process!",
    ]
)


def test_vague_answer_at_any_length() -> None:
    check = VaguenessCheck(max_vagueness=2.5)
    assert check.check(item(output=LONG_LAZY_ANSWER)) is Reason.VAGUE
    assert check.check(item(output=LAZY_ANSWER_2)) is Reason.VAGUE
    assert check.check(item()) is None
    for instruction, output in OTHER_GOOD:  # hedges around specifics are fine
        assert check.check(item(instruction, output)) is None


ONE_PARAGRAPH = (
    "Dense, gummy crumb usually means under-fermentation, so lengthen the bulk until the dough has risen by half "
    "and looks domed and bubbly, keep the overnight fridge proof, bake at 230C with the lid off after 20 minutes "
    "until the centre reaches 96C, and let the loaf cool for an hour before slicing; you will know it worked "
    "when the crumb is open and springs back."
)


def test_one_paragraph_shirker() -> None:
    check = OneParagraphCheck(LengthTracker(), max_words=200, min_instruction_words=20, min_items=20)
    assert check.check(item(output=ONE_PARAGRAPH)) is Reason.ONE_PARAGRAPH
    assert evaluate(item(output=ONE_PARAGRAPH)).reasons[0] is Reason.ONE_PARAGRAPH
    assert check.check(item()) is None  # one long paragraph is a developed answer
    structured = "Three changes, in order:\n\n1. " + ONE_PARAGRAPH.replace(", keep", "\n2. Keep")
    assert check.check(item(output=structured)) is None
    # Short instructions, or ones that ask for a short answer, may get one paragraph.
    assert check.check(item("Fix my dense sourdough, please?", ONE_PARAGRAPH)) is None
    assert check.check(item(INSTRUCTION + " Answer briefly.", ONE_PARAGRAPH)) is None


def test_one_paragraph_limit_follows_the_job_median() -> None:
    lengths = LengthTracker()
    check = OneParagraphCheck(lengths, max_words=20, min_instruction_words=20, min_items=5)
    assert check.check(item(output=ONE_PARAGRAPH)) is None  # 70 words, over the absolute limit of 20
    for _ in range(5):
        lengths.add(300)
    assert check.check(item(output=ONE_PARAGRAPH)) is Reason.ONE_PARAGRAPH  # under 0.8 x 300


def test_too_brief_for_the_job_after_enough_items() -> None:
    quality = QualityFilter(QualitySettings(brevity_min_items=10, checks=["too_brief"]))
    brief = " ".join(["Bake longer until the centre reaches 96C and cool it for an hour."] * 6)  # 78 words
    assert quality.verdict(item(output=brief)).accepted  # no median yet
    for _ in range(10):
        assert quality.verdict(item()).accepted  # the 290-word good answer sets the median
    assert quality.verdict(item(output=brief)).reasons == [Reason.TOO_BRIEF]
    assert quality.verdict(item(output=GOOD_ANSWER[: len(GOOD_ANSWER) // 2])).accepted  # half is not "far shorter"
    assert quality.verdict(item("Fix bread?", brief)).accepted  # short instructions are not judged


def test_length_tracker_median_is_windowed() -> None:
    lengths = LengthTracker(size=3)
    assert lengths.median() is None
    for n in (10, 20, 30, 40, 50):
        lengths.add(n)
    assert lengths.seen == 5 and lengths.median() == 40


@pytest.mark.parametrize(
    "output",
    [
        "{{your_answer}}}",
        "Here is my answer: {response}",
        GOOD_ANSWER + " <insert example here>",
        "Use [Insert first step] and then [Insert second step]. " + GOOD_ANSWER,
        GOOD_ANSWER + "\n\nBest,\n[Your Name]",
        "Lorem ipsum dolor sit amet. " + GOOD_ANSWER,
    ],
)
def test_placeholders(output: str) -> None:
    assert PlaceholderCheck().check(item(output=output)) is Reason.PLACEHOLDER


@pytest.mark.parametrize(
    ("instruction", "output"),
    [
        (INSTRUCTION, GOOD_ANSWER),
        (INSTRUCTION, GOOD_ANSWER + " Use `f'{name}: {temp}C'` to label your notes."),  # code is skipped
        ("Solve x^2 - 5x + 6 = 0 step by step.", "By the formula, x = \\frac{5 \\pm 1}{2}, so x = {2, 3}."),
        (INSTRUCTION, GOOD_ANSWER + " See [the guide](https://example.org) and [1]."),
        ("Write an email to my landlord asking to fix the boiler.", "Dear Mr Patel,\n\nThe boiler...\n\n[Your Name]"),
    ],
)
def test_no_placeholder_false_positives(instruction: str, output: str) -> None:
    assert PlaceholderCheck().check(item(instruction, output)) is None


def test_response_ignoring_its_skills() -> None:
    check = IgnoresSkillsCheck()
    skills = ["sourdough_fermentation", "oven_temperature_control"]
    assert check.check(item(output=LAZY_ANSWER, skills=skills)) is Reason.IGNORES_SKILLS
    assert check.check(item(skills=skills)) is None  # "fermentation", "temperature", "oven" appear
    # Lenient: skills the instruction never names may be exercised without being named.
    assert check.check(item(output=LAZY_ANSWER, skills=["snake_case_names", "unit_testing"])) is None
    assert check.check(item(output=LAZY_ANSWER)) is None  # no skills recorded


def test_checks_are_configurable_and_ordered() -> None:
    assert QualitySettings().checks[:4] == ["empty_response", "not_a_request", "refusal", "restates_instruction"]
    only = QualityFilter(QualitySettings(checks=["vague"]))
    assert [c.name for c in only.checks] == ["error", "cut_off", "vague"]
    assert only.verdict(item(output="ok")).accepted  # too_short is not enabled
    reordered = QualityFilter(QualitySettings(checks=["one_paragraph", "vague"]))
    assert reordered.verdict(item(output=LAZY_ANSWER)).reasons == [Reason.ONE_PARAGRAPH, Reason.VAGUE]
    with pytest.raises(ValueError, match="once"):
        QualitySettings(checks=["vague", "vague"])
    with pytest.raises(ValueError):
        QualitySettings.model_validate({"checks": ["no_such_check"]})


def test_fake_llm_answers_pass_every_check() -> None:
    """The end-to-end tests' fake writes made-up words; its good answers must pass the defaults."""
    import hashlib

    from tests.fake_llm import FakeConfig, make_pair

    quality = QualityFilter(QualitySettings())
    for i in range(200):
        skills = ["active_listening", "time_management"]
        pair = make_pair(hashlib.sha256(str(i).encode()).digest(), FakeConfig(), skills)
        it = item(pair.instruction, pair.response, skills=skills)
        assert quality.verdict(it).accepted, quality.verdict(it).detail


# --- fast paths: each must give exactly the decision of the slow path it skips -----------------------------


def _expansions(pattern: str, limit: int = 50_000) -> list[str]:
    """Texts the regex can match: every alternative of every branch (the product), repeats at their minimum
    and at one, a character class by its first member, look-arounds and anchors as nothing."""
    import itertools
    import re._constants as c
    import re._parser as parser

    def seq(items: Any) -> list[str]:
        out = [""]
        for op, av in items:
            options = node(op, av)
            out = [a + b for a in out for b in options]
            assert len(out) <= limit
        return out

    def node(op: object, av: Any) -> list[str]:
        if op is c.LITERAL:
            return [chr(av)]
        if op is c.BRANCH:
            return [s for branch in av[1] for s in seq(branch)]
        if op is c.SUBPATTERN:
            return seq(av[-1])
        if op in (c.MAX_REPEAT, c.MIN_REPEAT):
            lo, hi, sub = av
            body = seq(sub)
            return sorted({"".join(p) for n in {lo, min(max(lo, 1), hi)} for p in itertools.product(body, repeat=n)})
        if op is c.IN:
            first_op, first = av[0]
            return [chr(first if first_op is c.LITERAL else first[0]) if first_op in (c.LITERAL, c.RANGE) else "a"]
        if op is c.CATEGORY:
            return [" " if "SPACE" in str(av) else "a"]
        if op in (c.AT, c.ASSERT, c.ASSERT_NOT):
            return [""]
        raise NotImplementedError(op)

    return seq(parser.parse(pattern))


def test_refusal_literals_cover_every_refusal_pattern() -> None:
    from workers.curate.quality.checks import _REFUSAL_PATTERNS, _REFUSAL_RE, _may_refuse

    for pattern in _REFUSAL_PATTERNS:
        texts = _expansions(pattern)
        assert texts
        missed = [t for t in texts if _REFUSAL_RE.search(t) and not _may_refuse(t)]
        assert not missed, f"add a literal of {missed[:3]} to _REFUSAL_LITERALS"


def test_reask_literals_cover_every_reask_pattern() -> None:
    from workers.curate.quality.checks import _REASK_LITERALS, _REASK_RE

    missed = [t for t in _expansions(_REASK_RE.pattern) if not any(x in t for x in _REASK_LITERALS)]
    assert not missed, f"add a literal of {missed[:3]} to _REASK_LITERALS"


def test_placeholder_openings_contain_the_prefilter_strings() -> None:
    from workers.curate.quality.checks import _PLACEHOLDER_RES

    for openings, _ in _PLACEHOLDER_RES:
        if len(openings) > 1:
            assert all("ere" in o or "ERE" in o or "psum" in o for o in openings)


def test_refusal_fast_path_still_finds_refusals_in_context() -> None:
    answer = "Sure. " + "Bread needs time to rise in a warm kitchen. " * 3
    assert RefusalCheck().check(item(output="I'm sorry, but I can't help with that request.")) is Reason.REFUSAL
    assert RefusalCheck().check(item(output="Unfortunately, I am unable to do that.")) is Reason.REFUSAL
    assert RefusalCheck().check(item(output=answer)) is None


def test_batch_signatures_equal_the_deduper_minhash() -> None:
    from workers.curate.batch import _signatures
    from workers.curate.dedup import _minhash

    texts = [
        "",
        "   ",
        "!!!",
        "Hello",
        "Explain the river garden engine case number 7.",
        "Explain the river garden engine case number 8.\nwith an input",
        "café déjà vu — “quoted” snake_case x+1",
        INSTRUCTION,
        "a b c a b c",
    ]
    for num_perm in (128, 64, 16):
        want = [_minhash(t, num_perm).astype(">u4").tobytes() for t in texts]
        assert _signatures(texts, num_perm) == want
        assert _signatures(texts[::-1], num_perm) == want[::-1]
        assert _signatures(["", ""], num_perm) == [want[0], want[0]]


# --- glance-level checks (issue 18): what a person rejects on sight, on either side of the pair -------------

QUICKSTART_JUNK_ANSWER = (
    "A sourdough starter is a culture of wild yeast and bacteria. [insert description here] Feed it flour and "
    "water every day, keep it warm, and discard half before each feeding so the acidity stays in check."
)


@pytest.mark.parametrize(
    ("instruction", "output"),
    [
        ("[insert response here] Explain how a sourdough starter ferments and how to keep one alive.", GOOD_ANSWER),
        (INSTRUCTION, QUICKSTART_JUNK_ANSWER),
        (INSTRUCTION, "Set the oven to `[insert temperature here]` and bake. " + GOOD_ANSWER),
        (INSTRUCTION, GOOD_ANSWER + "\n\n```python\nname = <your name>\n```"),
        (INSTRUCTION, GOOD_ANSWER + " Log it as `{placeholder}`."),
        ("Write a letter to my landlord about the boiler. [insert response here]", GOOD_ANSWER),
        ("{instruction}", GOOD_ANSWER),
    ],
)
def test_placeholders_on_both_sides_and_in_code(instruction: str, output: str) -> None:
    check = PlaceholderCheck()
    assert check.check(item(instruction, output)) is Reason.PLACEHOLDER
    side = "response" if output is not GOOD_ANSWER else "instruction"
    assert check.explain(item(instruction, output)).endswith(f"in the {side}")


@pytest.mark.parametrize(
    "output",
    [
        GOOD_ANSWER + " Index with `arr[i]` and annotate `dict[str, int]`.",
        GOOD_ANSWER + '\n\n```html\n<div class="loaf">{x}</div>\n```',
        GOOD_ANSWER + ' Print it with `f"{name}: {temp}C"`.',
        GOOD_ANSWER + " The area is $\\frac{a}{b}$ and `x[0] = {1, 2}`.",
    ],
)
def test_code_syntax_is_no_placeholder(output: str) -> None:
    assert PlaceholderCheck().check(item(output=output)) is None


def test_personal_fields_stay_allowed_in_a_letter_but_content_fields_do_not() -> None:
    ask = "Write an email to my landlord asking to fix the boiler."
    assert PlaceholderCheck().check(item(ask, "Dear Mr Patel,\n\nThe boiler...\n\n[Your Name]")) is None
    leak = "Dear Mr Patel,\n\n[Insert response here]\n\n[Your Name]"
    assert PlaceholderCheck().check(item(ask, leak)) is Reason.PLACEHOLDER


@pytest.mark.parametrize(
    "instruction",
    [
        "The correct answer is: 2.5. I am not sure about the other part.",  # the quick-start junk
        "I'm ready to help you edit this response, just let me know which parts need more detail.",
        "I\u2019m ready to help you edit this response, ...",
        "Here is the revised instruction: explain the water cycle with an example from a mountain village.",
        "Sure! Here's a creative writing prompt about a lighthouse keeper.",
        "As an AI language model, I can provide information on healthy eating for teenagers.",
        "Python lists are mutable sequences that can hold items of different types.",
        "The answer is 42 because the function doubles the input twice and then adds two.",
    ],
)
def test_not_a_request(instruction: str) -> None:
    check = NotARequestCheck()
    assert check.check(item(instruction)) is Reason.NOT_A_REQUEST
    assert check.explain(item(instruction)).startswith("not a request: ")
    assert evaluate(item(instruction)).reasons[0] is Reason.NOT_A_REQUEST


@pytest.mark.parametrize(
    "instruction",
    [
        INSTRUCTION,
        "Write a short poem about the sea at dawn for a greeting card.",
        "I'm a teacher planning a field trip. I seek advice on keeping thirty children safe at a busy museum.",
        "Please review my draft below. Here is the revised introduction I wrote: 'Our town was founded in 1820.'",
        "Is 2.5 the correct answer to 5 divided by 2, or did I make a mistake?",
        "Given a list of integers, return the indices of the two numbers that add up to a target.",
        "**Scenario:** You are a museum curator. Draft a label for a Roman coin.",
    ],
)
def test_real_requests_are_requests(instruction: str) -> None:
    assert NotARequestCheck().check(item(instruction)) is None


def test_short_instruction_answered_with_something_else_is_off_topic() -> None:
    from workers.curate import semantic

    assert OffTopicCheck(0.25, 20).check(item("Explain how tides are caused by the moon.", "x " * 40)) is None
    embed = semantic.embedder()  # a short instruction is judged with the model only (words miss paraphrase)
    assert embed is not None, "the [embed] extra's model is installed in CI"
    check = OffTopicCheck(0.25, 20, embed)
    ask = "Explain how tides are caused by the moon."
    astray = (
        "Good writing is concise and direct, so I removed extra words, grouped related points together and "
        "made each paragraph open with its key sentence so the reader can skim it quickly and act on it."
    )
    assert check.check(item(ask, astray)) is Reason.OFF_TOPIC
    assert "short instruction" in check.explain(item(ask, astray))
    answer = "The moon's gravity pulls the ocean toward it, so the water bulges on the near side " + astray
    assert check.check(item(ask, answer)) is None  # shares "moon"
    assert check.check(item(ask, astray, skills=["concise_writing", "editing"])) is None  # the skills' topic
    assert check.check(item("Say 5.", astray)) is None  # too short to compare
    paraphrase = (
        "Several pressures combined in 1789. The monarchy was nearly bankrupt after funding wars, and taxes fell "
        "mostly on the Third Estate while clergy and nobles kept privileges; poor harvests pushed bread prices up."
    )
    assert check.check(item("Summarise the causes of the French Revolution.", paraphrase)) is None


SEA_POEM = (
    "Grey light spills across the bay,\nthe gulls wake up and wheel away,\nthe tide pulls back its silver "
    "thread,\nand morning paints the water red."
)


def test_no_skill_shown_by_words() -> None:
    check = NoSkillShownCheck({"cooking_techniques": "explain recipes and kitchen methods"}, 0.2)
    poem = item(
        "Write a short poem about the sea at dawn.", SEA_POEM, skills=["cooking_techniques", "python_programming"]
    )
    assert check.check(poem) is Reason.NO_SKILL_SHOWN
    assert "cooking_techniques, python_programming" in check.explain(poem)
    # One skill is enough: the name's words ("python"), or two words of a description.
    code = item("Write a short poem about the sea.", SEA_POEM + " (printed by a Python script)", skills=poem.skills)
    assert check.check(code) is None
    kitchen = item("Write a poem about the sea.", SEA_POEM + " Then a recipe from my kitchen.", skills=poem.skills)
    assert check.check(kitchen) is None
    assert check.check(item(skills=["sourdough_fermentation", "oven_temperature_control"])) is None
    assert check.check(item(output=SEA_POEM)) is None  # no skills recorded


def test_no_skill_shown_asks_the_model_only_when_the_words_found_nothing() -> None:
    calls: list[list[str]] = []

    def embed(texts: Any) -> Any:
        import numpy as np

        calls.append(list(texts))
        # a made-up model: a text is close to a definition when both mention the sea
        return np.array([[1.0, 0.0] if ("sea" in t or "ocean" in t) else [0.0, 1.0] for t in texts])

    skills = ["cooking_techniques", "marine_biology"]
    check = NoSkillShownCheck({"marine_biology": "explain life in the ocean"}, 0.2, embed)
    sea = item("Write a short poem about the sea at dawn.", SEA_POEM, skills=["cooking_techniques", "coastal_poetry"])
    assert check.check(sea) is Reason.NO_SKILL_SHOWN  # the model saw nothing near either skill
    assert "similarity 0.00 < 0.2" in check.explain(sea)
    n = len(calls)
    assert check.check(item("Describe the tide.", "The sea pulls back its silver thread.", skills=skills)) is None
    assert len(calls) > n  # the words found nothing, the model found the sea in marine_biology
    n = len(calls)
    assert check.check(item(skills=["sourdough_fermentation", "oven_temperature_control"])) is None
    assert len(calls) == n  # the words decided: no embedding


def test_no_skill_shown_falls_back_to_words_when_the_model_fails() -> None:
    def broken(texts: Any) -> Any:
        raise OSError("model files missing")

    check = NoSkillShownCheck({}, 0.2, broken)
    poem = item("Write a short poem about the sea at dawn.", SEA_POEM, skills=["cooking_techniques", "algebra"])
    assert check.check(poem) is Reason.NO_SKILL_SHOWN and check.embed is None


def test_the_filter_passes_the_job_skill_descriptions() -> None:
    quality = QualityFilter(QualitySettings(checks=["no_skill_shown"]), {"cooking_techniques": "recipes kitchen"})
    [check] = [c for c in quality.checks if isinstance(c, NoSkillShownCheck)]
    assert check.descriptions == {"cooking_techniques": "recipes kitchen"}
    assert "no_skill_shown" in QualitySettings().checks and "not_a_request" in QualitySettings().checks
