"""The compiled prompt program: mining, the dev search, ranking by log-probability, --ask's parser,
and the program file's refusals."""

import json

import pytest
import torch
from conftest import FP32

from nanolevels import data
from nanolevels.files import write_json
from nanolevels.checkpoint import load_model
from nanolevels.model import GPT, GPTConfig
from nanolevels.program import (PARAPHRASES, answer_logprobs, compile_program, load_program, mine_templates,
                                parse_question, prompt_text, run_program, search)
from nanolevels.tokenizer import Tokenizer
from nanolevels.world import ATTRIBUTES, QUESTIONS

ADA = [{"person": "Ada Jo Crane", "attribute": "birth_city", "answer": "Lyon"},
       {"person": "Ada Jo Crane", "attribute": "major", "answer": "Physics"}]


def test_mining_finds_the_corpus_templates_and_no_other():
    corpus = ("Ada Jo Crane was born in Lyon. Ada Jo Crane liked tea.\n<|endoftext|>\n"
              "The birthplace of Ada Jo Crane is Lyon. Ada Jo Crane was born in Lyon.\n"
              "Lyon is where Ada Jo Crane grew up. Bo Lee Vance hails from Porto. Ada Jo Crane majored in Physics.\n"
              "Q: What is the birth city of Ada Jo Crane?\n")
    mined = mine_templates(corpus, ADA, keep=4)
    assert mined["birth_city"] == ["{name} was born in", "The birthplace of {name} is"]  # most frequent first
    assert mined["major"] == ["{name} majored in"]
    assert mine_templates(corpus, ADA, keep=1)["birth_city"] == ["{name} was born in"]
    assert all(not mined.get(a) for a in ATTRIBUTES if a not in ("birth_city", "major"))


def test_prompt_text_writes_demos_the_way_the_template_ends():
    sentence = {"template": "{name} was born in", "stop": ".", "demos": [["Bo Lee Vance", "Porto"]]}
    assert prompt_text(sentence, "Ada Jo Crane") == "Bo Lee Vance was born in Porto. Ada Jo Crane was born in"
    question = {"template": "Q: Where was {name} born?\nA:", "stop": "\n", "demos": [["Bo Lee Vance", "Porto"]]}
    assert prompt_text(question, "Ada Jo Crane") == ("Q: Where was Bo Lee Vance born?\nA: Porto\n"
                                                    "Q: Where was Ada Jo Crane born?\nA:")


def test_search_returns_the_best_dev_candidate():
    dev = {"birth_city": [{"person": f"P{i}", "attribute": "birth_city", "answer": f"City{i}"} for i in range(4)]}
    right = {"{name} hails from": 4, "{name} was born in": 3}  # how many dev people each template gets right

    def toy_model(prompts, names):  # answers the first right[template] people correctly, the rest wrongly
        return [f"City{n[1:]}" if int(n[1:]) < right.get(p["template"], 0) else "Nowhere"
                for p, n in zip(prompts, names)]

    candidates = {"birth_city": [{"template": t, "stop": ".", "demos": []} for t in
                                 ("{name} was born in", "Q: Where was {name} born?\nA:", "{name} hails from",
                                  "{name} spent early childhood in")]}
    best, scores = search(candidates, dev, toy_model)
    assert best["birth_city"]["template"] == "{name} hails from"
    assert scores["birth_city"] == [0.75, 0.0, 1.0, 0.0]
    right["{name} hails from"] = 3  # a tie goes to the earlier candidate
    assert search(candidates, dev, toy_model)[0]["birth_city"]["template"] == "{name} was born in"


def test_parse_question_reads_every_form_and_rejects_others():
    people = ["Ada Jo Crane", "Bo Lee Vance"]
    for attribute in ATTRIBUTES:
        for form in (QUESTIONS[attribute], PARAPHRASES[attribute]):
            assert parse_question(form.format(name="Ada Jo Crane"), people) == ("Ada Jo Crane", attribute)
    assert parse_question("  what is the birth city of ada jo crane? ", people) == ("Ada Jo Crane", "birth_city")
    for question in ("Who is Ada Jo Crane?", "What is the birth city of Mira Jo Thorne?", ""):
        with pytest.raises(ValueError) as e:
            parse_question(question, people)
        assert "\n" not in str(e.value) and QUESTIONS["major"].format(name="<name>") in str(e.value)


def tiny_model_and_tokenizer():
    tokenizer = Tokenizer.train("Ada Jo Crane was born in Lyon. Bo Lee Vance was born in Porto.\n" * 20, 300)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16)).eval()
    return model, tokenizer


def test_answer_logprobs_sum_each_answer_tokens_exactly():
    model, tokenizer = tiny_model_and_tokenizer()
    prompt, answers = "Ada Jo Crane was born in", ["Lyon", "Porto", "Bo Lee Vance"]
    got = answer_logprobs(model, tokenizer, prompt, answers)
    for answer, value in zip(answers, got):
        ids = [tokenizer.eot_id] + tokenizer.encode(prompt)
        total = 0.0
        for token in tokenizer.encode(" " + answer):  # one full forward per answer token, no cache
            logits, _ = model(torch.tensor([ids]))
            total += logits[0, -1].log_softmax(-1)[token].item()
            ids.append(token)
        torch.testing.assert_close(value.item(), total, **FP32)
    assert len(tokenizer.encode(" Bo Lee Vance")) > 1  # the sum runs over several tokens

    # the ensemble: the value whose log-probabilities, summed over the prompts, are highest
    prompts = [{"template": "{name} was born in", "stop": ".", "demos": []},
               {"template": "The birthplace of {name} is", "stop": ".", "demos": [["Bo Lee Vance", "Porto"]]}]
    program = {"attributes": {"birth_city": {"prompts": prompts, "values": answers}}}
    total = sum(answer_logprobs(model, tokenizer, prompt_text(p, "Ada Jo Crane"), answers) for p in prompts)
    question = {"person": "Ada Jo Crane", "attribute": "birth_city"}
    assert run_program(model, tokenizer, program, [question]) == [answers[int(total.argmax())]]


def test_compiled_program_round_trips_and_refuses_bad_files(tiny_run, tmp_path):
    model, tokenizer, _ = load_model(tiny_run["checkpoint"])
    qa = data.load_questions(tiny_run["world"], "train", "dev")
    text = open(f"{tiny_run['world']}/pretrain.txt", encoding="utf-8").read()
    program = compile_program(model, tokenizer, text, qa["dev"], qa["train"], log=lambda *a: None)
    assert set(program["attributes"]) == set(ATTRIBUTES)
    for entry in program["attributes"].values():
        assert 0 <= entry["dev"] <= 1 and entry["prompts"]
        assert entry["dev"] >= max(c["dev"] for c in entry["candidates"])  # the search never picks worse
    path = str(tmp_path / "program.json")
    write_json(path, program)
    assert load_program(path, model, tokenizer, "RECOMPILE") == program

    with pytest.raises(FileNotFoundError, match="RECOMPILE"):
        load_program(str(tmp_path / "none.json"), model, tokenizer, "RECOMPILE")
    for broken in ("{not json", json.dumps({**program, "attributes": {"major": {"prompts": [{}]}}}),
                   json.dumps({**program, "format": "something else"})):
        (tmp_path / "bad.json").write_text(broken)
        with pytest.raises(ValueError, match="corrupt.*RECOMPILE"):
            load_program(str(tmp_path / "bad.json"), model, tokenizer, "RECOMPILE")
    other, _ = tiny_model_and_tokenizer()
    with pytest.raises(ValueError, match="another model.*RECOMPILE"):
        load_program(path, other, tokenizer, "RECOMPILE")
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1  # the same config and tokenizer, other weights
    with pytest.raises(ValueError, match="its model changed.*RECOMPILE"):
        load_program(path, model, tokenizer, "RECOMPILE")
