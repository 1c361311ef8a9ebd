"""Live auctions: lots, proxy bidding, soft close, bidder deposits and the closing scheduler."""
