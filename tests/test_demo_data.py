from dmporec.demo_data import DemoDataConfig, make_demo_data


def test_deterministic_and_well_formed():
    cfg = DemoDataConfig(train_users=20, valid_users=5, test_users=30, negatives=4, seed=7)
    a, b = make_demo_data(cfg), make_demo_data(cfg)
    assert a == b
    assert make_demo_data(cfg.model_copy(update={"seed": 8})).train != a.train
    for rec in a.train + a.valid + a.test:
        titles = {i.title for i in rec.history}
        assert rec.positive.title not in titles
        assert not titles & {n.title for n in rec.negatives}
        assert a.catalog[rec.positive.title] in rec.metadata["liked"]
        assert all(a.catalog[n.title] in rec.metadata["disliked"] for n in rec.negatives)
        assert cfg.history_min <= len(rec.history) <= cfg.history_max
        rec.validate()
    assert [r.k for r in a.train] == [4] * 20 and {r.k for r in a.test} == {1}


def test_validation_users_leave_training_and_test_users_unchanged():
    """Validation users are drawn last: adding them (the demo's hybrid is fitted on them) keeps
    every published demo result's training and test data."""
    without = make_demo_data(DemoDataConfig(train_users=10, valid_users=0, test_users=12))
    with_valid = make_demo_data(DemoDataConfig(train_users=10, valid_users=6, test_users=12))
    assert with_valid.train == without.train and with_valid.test == without.test
    assert len(with_valid.valid) == 6 and {r.k for r in with_valid.valid} == {5}
