"""The fused K-member forward equals running each member on its own."""

import torch

from models.cnn import CNNConfig, FusedMembers, GroupedCNN, MemberCNN, flops_per_image


def _trained_like(k: int, config: CNNConfig) -> GroupedCNN:
    """Grouped members with non-trivial batch-norm statistics, as after training."""
    torch.manual_seed(0)
    grouped = GroupedCNN(k, config)
    grouped.train()
    with torch.no_grad():
        for _ in range(3):
            grouped(torch.randn(32, k, 28, 28) * 2 + 0.5)
    return grouped.eval()


def test_fused_forward_equals_member_loop():
    config = CNNConfig(stages=(4, 8))
    state_dicts = _trained_like(3, config).member_state_dicts()
    x = torch.randn(5, 1, 28, 28)
    fused = FusedMembers(state_dicts, config).eval()
    with torch.no_grad():
        out = fused(x)
        for i, sd in enumerate(state_dicts):
            member = MemberCNN(config)
            member.load_state_dict(sd)
            member.eval()
            torch.testing.assert_close(out[i], member(x), rtol=1e-4, atol=1e-4)
    assert out.shape == (3, 5, 10)


def test_grouped_state_dicts_round_trip():
    config = CNNConfig(stages=(4, 8))
    grouped = _trained_like(2, config)
    rebuilt = GroupedCNN.from_members(grouped.member_state_dicts(), config)
    for (k1, v1), (k2, v2) in zip(
        grouped.state_dict().items(), rebuilt.state_dict().items(), strict=True
    ):
        assert k1 == k2
        torch.testing.assert_close(v1, v2)


def test_grouped_members_see_only_their_own_channel():
    config = CNNConfig(stages=(4, 8))
    grouped = _trained_like(2, config)
    x = torch.randn(4, 2, 28, 28)
    changed = x.clone()
    changed[:, 1] = torch.randn(4, 28, 28)
    with torch.no_grad():
        a, b = grouped(x), grouped(changed)
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[1], b[1])


def test_flops_hand_count():
    # stages (4, 8): 28*28*9*(1*4 + 4*4) + 14*14*9*(4*8 + 8*8) + 8*7*7*10 MACs
    macs = 784 * 9 * 20 + 196 * 9 * 96 + 8 * 49 * 10
    assert flops_per_image(CNNConfig(stages=(4, 8))) == 2 * macs
