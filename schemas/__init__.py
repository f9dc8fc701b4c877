"""retranscope."""
