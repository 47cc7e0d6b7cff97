-- Answering-machine detection's result on outbound calls that asked for it:
-- human, machine or notsure (NULL when AMD did not run or decide).
ALTER TABLE cdrs ADD COLUMN amd TEXT;
