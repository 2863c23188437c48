"""Measurement tools built on the client library: load test, evaluation, self-play, the
Twilio simulator, and the speech-activity and turn statistics they report."""
