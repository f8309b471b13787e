"""The scheduling benchmark's work-aware parts: the `oracle-work` bound orders by true prompt plus
answer, the answer-only oracle by the answer alone; `answer_only` swaps in the ranker's own score."""

from __future__ import annotations

from bench.scheduling_workload import LengthRequest, OracleRemainingPolicy, OracleWorkPolicy, answer_only
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence


def seq(request_id: str, prompt_tokens: int, answer_tokens: int) -> Sequence:
    return Sequence(request_id, list(range(1, prompt_tokens + 1)), SamplingParams(max_tokens=answer_tokens), 0.0)


def test_the_work_oracle_counts_the_prompt_still_to_compute():
    few_shot = seq("few-shot", prompt_tokens=900, answer_tokens=5)  # work 905
    chat = seq("chat", prompt_tokens=20, answer_tokens=300)  # work 320
    by_answer, by_work = OracleRemainingPolicy(), OracleWorkPolicy(prefill_weight=1.0)
    assert sorted([few_shot, chat], key=by_answer.sort_key)[0] is few_shot
    assert sorted([few_shot, chat], key=by_work.sort_key)[0] is chat
    assert by_work.sort_key(chat)[1] == 320.0
    few_shot.num_computed_tokens = 900  # prefilled: only its 5 answer tokens remain
    assert sorted([few_shot, chat], key=by_work.sort_key)[0] is few_shot
    assert OracleWorkPolicy(prefill_weight=0.0).sort_key(chat)[1] == by_answer.sort_key(chat)[1]


def test_answer_only_replays_the_same_requests_on_the_rankers_own_score():
    pools = [[LengthRequest(100, 10, rank_score=0.9, answer_score=0.2)], [LengthRequest(5, 50, 0.4, 0.6)]]
    swapped = answer_only(pools)
    assert [[r.rank_score for r in pool] for pool in swapped] == [[0.2], [0.6]]
    assert [[(r.prompt_tokens, r.output_tokens) for r in pool] for pool in swapped] == [[(100, 10)], [(5, 50)]]
