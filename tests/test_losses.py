import torch

from compressor.losses import LossWeights, StyleTransferLoss, adain_style_loss, gram_matrix, style_loss, tv_loss


def test_gram_matrix_matches_hand_computation():
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 2.0]]]])  # N=1, C=2, H=W=2
    # rows: a = [1, 2, 3, 4], b = [0, 1, 0, 2]; a·a = 30, a·b = 10, b·b = 5; C·H·W = 8
    expected = torch.tensor([[[30.0, 10.0], [10.0, 5.0]]]) / 8
    torch.testing.assert_close(gram_matrix(f), expected)


def test_style_loss_is_weighted_mean_squared_gram_difference():
    f = {"a": torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 2.0]]]])}
    target = {"a": torch.zeros(1, 2, 2)}
    g = torch.tensor([[30.0, 10.0], [10.0, 5.0]]) / 8
    expected = 0.5 * (g**2).mean()
    torch.testing.assert_close(style_loss(f, target, {"a": 0.5}), expected)


def test_tv_loss_hand_computation():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    # vertical diffs |2-0|, |4-1| -> mean 2.5; horizontal |1-0|, |4-2| -> mean 1.5
    torch.testing.assert_close(tv_loss(x), torch.tensor(4.0))


def test_adain_style_loss_zero_for_same_statistics():
    a = {"relu1_1": torch.randn(1, 4, 8, 8)}
    assert adain_style_loss(a, a).item() == 0.0
    b = {"relu1_1": a["relu1_1"] * 2 + 1}
    assert adain_style_loss(a, b).item() > 0


def test_style_transfer_loss_zero_at_target(random_vgg):
    image = torch.rand(1, 3, 64, 64)
    grams = {k: gram_matrix(v) for k, v in random_vgg(image).items()}
    criterion = StyleTransferLoss(random_vgg, grams, LossWeights(tv=0.0))
    terms = criterion(image, image)
    assert terms["content"].item() == 0.0 and terms["style"].item() < 1e-12
    other = criterion(torch.rand(1, 3, 64, 64), image)
    assert other["style"] > 0 and other["content"] > 0
