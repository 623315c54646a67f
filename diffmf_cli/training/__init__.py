"""Training DIFF-MF: settings, data, losses and the loop. This file stays free of torch, so the CLI can name
what it needs from here without importing the loop."""

#: Config fields a fine-tune (--init) may change: they act in the output head only, so the file's weights mean
#: the same in the new network.
INIT_MAY_CHANGE = ("select_gain", "residual_scale", "residual_bound")
