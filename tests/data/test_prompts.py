"""UCF-101 zero-shot prompts: 101 classes, explicit mapping of the 105 printed entries."""

from __future__ import annotations

from cmdbench.data.prompts import (
    DROPPED_PRINTED_PROMPTS,
    printed_ucf101_prompts,
    ucf101_class_names,
    ucf101_class_prompts,
    ucf101_prompts,
    zero_shot_plan,
)


def test_101_classes_in_classind_order():
    names = ucf101_class_names()
    assert len(names) == 101 and len(set(names)) == 101
    assert names[0] == "ApplyEyeMakeup" and names[36] == "HandstandPushups" and names[100] == "YoYo"
    assert list(names) == sorted(names, key=str.lower)  # classInd.txt is alphabetical
    assert [p.class_index for p in ucf101_class_prompts()] == list(range(101))


def test_printed_list_is_the_used_prompts_plus_the_documented_drops_in_order():
    printed = printed_ucf101_prompts()
    assert len(printed) == 105
    kept = [p for p in printed if p not in DROPPED_PRINTED_PROMPTS]
    assert kept == list(ucf101_prompts())  # order preserved, nothing invented
    assert sorted(set(printed) - set(kept)) == sorted(DROPPED_PRINTED_PROMPTS)


def test_spot_checks_of_the_mapping():
    by_name = {p.class_name: p.prompt for p in ucf101_class_prompts()}
    assert by_name["Bowling"] == "a person bowling on bowling alley"
    assert by_name["CricketShot"] == "batting in cricket gameplay"
    assert by_name["PoleVault"] == "an athlete jumps over the bar"
    assert by_name["Punch"] == "boxing match"
    assert by_name["WallPushups"] == "doing pushups on the wall"
    assert by_name["YoYo"] == "a kid playing Yo-Yo"


def test_zero_shot_plan():
    plan = zero_shot_plan(3)
    assert len(plan) == 303 and plan[:3] == [(0, "applying eye makeup")] * 3 and plan[-1][0] == 100
