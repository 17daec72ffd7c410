"""The round engine: server loop, client handler and the Link seam. No transport code here."""
