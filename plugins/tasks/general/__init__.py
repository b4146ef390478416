"""General-ability tasks: what editing breaks (Gu et al., 2024, "Model Editing Harms General Abilities
of Large Language Models"): reasoning, NLI, open and closed QA, dialogue, summarisation, NER, sentiment.

Data: ``{data_dir}/general/`` as described in the data README (test files only, from the paper's
release). With no training split, each task takes the first ``shots`` records of its file as the
few-shot demonstrations and evaluates on the rest; example ids are the file's own ids where it has
them (NLI ``index``, dialogue and summarisation ``id``), else the record's 0-based position in the
file (for NER, the sentence's). ``default_limit`` is the documented CPU subset; measured on
gemma3-270m, two CPU cores, unedited: nli 95 s, sentiment 60 s, closed_qa 68 s, dialogue 139 s,
open_qa 32 s, ner 98 s, summarization 101 s, reasoning 446 s (generation costs ~120 ms a token there,
most of it reading the 262k-word output matrix; an edited model that stops writing less goes faster).

Per task: data set; shots; default_limit; what a prediction is; metric keys (percent, headline first).

- general_reasoning: GSM8K; 3; 30; a generated solution, its final number read after "####", else
  after "The answer is", else the last number; solve_rate.
- general_nli: RTE; 4; 200; option " yes" (entailment) or " no" (not_entailment); accuracy.
- general_open_qa: Natural Questions; 5; 50; a generated answer, exact match with any gold answer
  after SQuAD normalisation; exact_match.
- general_closed_qa: BoolQ; 2 (passages cut to 60 words); 100; option " yes" or " no"; exact_match.
- general_dialogue: MuTual; 1; 100; the chosen candidate's text, or its letter A-D; accuracy.
- general_summarization: SAMSum; 1; 30; a generated summary; rouge_mean, rouge1, rouge2, rougeL.
- general_ner: CoNLL-2003; 3; 50; a generated list "TEXT (TYPE); ..." or "none"; f1, precision, recall.
- general_sentiment: SST-2; 6; 200; option " positive" or " negative"; accuracy.

Label words are read back after stripping and lowercasing. NER matches (type, text) multisets
(a generated list has no token offsets); gold entities come from IOB1 or IOB2 tags alike.

All of the above is the ``fewshot`` scoring profile, the default; ``meh`` (meh.py) asks and scores as
Gu et al.'s own scripts do (docs/ability-protocols.md sets the two side by side).
"""

from harness.hookspecs import hookimpl

from .tasks import TASKS


@hookimpl
def register_tasks(register):
    for task in TASKS:
        register(task)
