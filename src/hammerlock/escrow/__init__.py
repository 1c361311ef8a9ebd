"""Orders after a lot closes: escrow, shipping, inspection, release, payout, disputes (issue #6)."""
