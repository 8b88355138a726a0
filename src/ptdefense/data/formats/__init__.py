"""One module per on-disk dataset format; ptdefense.data.loading dispatches to them by dataset name."""
