"""The spare trial worker decided from the memory budget (issue 27): none on a small budget, with the reason logged
once and in the status the doctor reads; an explicit trial_spare_max_mb still wins."""

from __future__ import annotations

import logging

from agent.config import AgentConfig
from agent.doctor import check_spare
from agent.serving.spare import CAP_MIB, SPARE_MIB, choose_spare


def test_a_small_budget_keeps_no_spare_and_says_why():
    choice = choose_spare(None, True, budget_mb=350, free_mb=300)
    assert not choice.kept and not choice.configured
    assert "over 1/8 of the 350 MiB memory budget" in choice.reason and "trial_spare_max_mb" in choice.reason


def test_a_budget_with_room_keeps_one_capped_at_an_eighth():
    assert choose_spare(None, True, budget_mb=8 * SPARE_MIB, free_mb=8 * SPARE_MIB).max_mb == SPARE_MIB
    big = choose_spare(None, True, budget_mb=16000, free_mb=15000)
    assert big.kept and big.max_mb == CAP_MIB


def test_too_little_free_keeps_no_spare_even_on_a_large_budget():
    choice = choose_spare(None, True, budget_mb=4000, free_mb=SPARE_MIB - 1)
    assert not choice.kept and f"{SPARE_MIB - 1:.0f} MiB of the 4000 MiB memory budget is free" in choice.reason


def test_an_explicit_config_value_wins_both_ways():
    assert choose_spare(200.0, True, budget_mb=350, free_mb=10).max_mb == 200.0
    zero = choose_spare(0.0, True, budget_mb=16000, free_mb=15000)
    assert not zero.kept and zero.configured and "trial_spare_max_mb = 0 in the config" in zero.reason


def test_no_spare_without_an_isolated_trial():
    assert not choose_spare(500.0, False, budget_mb=16000, free_mb=15000).kept


def test_unset_in_the_config_means_the_agent_decides(tmp_path):
    base = {"device_id": "d", "data_dir": tmp_path, "broker": "mqtt://127.0.0.1:9"}
    assert AgentConfig(**base).trial_spare_max_mb is None
    assert AgentConfig(**base, trial_spare_max_mb=0).trial_spare_max_mb == 0


def test_the_agent_logs_the_choice_once_and_reports_it(tmp_path, caplog):
    from agent.service import Agent

    caplog.set_level(logging.INFO, logger="agent.service")
    config = AgentConfig(
        device_id="d", data_dir=tmp_path, broker="mqtt://127.0.0.1:9", api="127.0.0.1:0", memory_budget_mb=350
    )
    agent = Agent(config, hardware={})
    lines = [r.getMessage() for r in caplog.records if "spare trial worker" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(f"no spare trial worker: it takes ~{SPARE_MIB:.0f} MiB, over 1/8")
    reported = agent.link_status()["trial_spare"]
    assert reported["kept"] is False and reported["reason"] == lines[0]
    check = check_spare({"trial_spare": reported})
    assert check is not None and check.outcome == "ok" and check.detail == lines[0]


def test_the_doctor_warns_when_a_kept_spare_stopped_over_its_cap():
    spare = {"kept": True, "enabled": False, "last_mib": 130.0, "reason": "a spare trial worker up to 100 MiB: ..."}
    check = check_spare({"trial_spare": spare})
    assert check is not None and check.outcome == "warn" and "130.0 MiB" in check.detail
    assert check_spare({"device_id": "d"}) is None  # an older agent that does not say
