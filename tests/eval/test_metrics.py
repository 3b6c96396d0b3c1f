from tuneforge.eval import metrics as M

REFS = [
    '{"queue": "billing", "priority": "high"}',
    '{"queue": "shipping", "priority": "low"}',
    '{"queue": "billing", "priority": "low"}',
    '{"queue": "technical", "priority": "high"}',
]


def test_json_task_strict_and_lenient():
    preds = [
        '{"queue": "billing", "priority": "high"}',  # exact
        '{"queue":"shipping","priority":"low"}',  # same JSON, other spacing: strict counts it
        "This is a billing issue with low priority.",  # right answer in prose: lenient only
        '{"queue": "technical", "priority": "urgent"}',  # one field wrong
    ]
    m = M.score(REFS, preds)
    assert m["task"] == "json"
    assert m["exact_match"] == 50.0
    assert m["json_valid"] == 75.0
    assert m["fields"]["queue"]["strict"]["accuracy"] == 0.75
    assert m["fields"]["queue"]["lenient"]["accuracy"] == 1.0
    assert m["fields"]["priority"]["strict"]["accuracy"] == 0.5
    assert m["fields"]["priority"]["lenient"]["accuracy"] == 0.75
    assert m["lenient_match"] == 75.0
    cm = m["fields"]["queue"]["strict"]["confusion"]
    assert "<none>" in cm["labels"]  # the prose answer could not be read strictly


def test_label_task_macro_scores():
    refs = ["positive", "negative", "neutral", "positive", "negative", "neutral"]
    preds = ["positive", "Negative.", "I think it is neutral", "negative", "negative", "neutral"]
    m = M.score(refs, preds)
    assert m["task"] == "label"
    strict = m["labels"]["strict"]
    lenient = m["labels"]["lenient"]
    assert strict["accuracy"] == 4 / 6  # "I think it is neutral" is not a strict label
    assert lenient["accuracy"] == 5 / 6
    assert 0 < strict["macro_f1"] < 1
    assert set(strict["per_class"]) == {"negative", "neutral", "positive"}
    head = M.headline(m)
    assert head["accuracy (lenient)"] > head["accuracy (strict)"]


def test_text_task_uses_bleu_rouge_chrf():
    refs = ["The cat sat on the mat today.", "Reset your password from the login page."]
    same = M.score(refs, refs)
    other = M.score(refs, ["A dog ran in the park.", "Call support."])
    assert same["task"] == "text"
    assert same["bleu"] > 99 and same["rouge_l"] > 99 and same["chrf"] > 99
    assert other["bleu"] < 20 and other["rouge_l"] < 40 and other["chrf"] < 40


def test_parse_json_object_from_prose():
    assert M.parse_json_object('Sure! ```json\n{"queue": "sales"}\n```') == {"queue": "sales"}
    assert M.parse_json_object("no json here") is None
