"""Networks: the `model:` config section (`config`), timm backbones with a new head and checkpoint
loading (`factory`), and the paper's compact benchmark networks (`paper_nets`)."""
