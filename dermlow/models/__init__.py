"""Networks: timm backbones with a new head (`factory`, which also owns the `model:` config
section and checkpoint loading) and the paper's compact benchmark networks (`paper_nets`)."""
