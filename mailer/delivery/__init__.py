"""How mail leaves: the outbox, the sender, rendering, transports, the send budget and
bounces. Nothing here imports from campaigns/ or audience/."""
