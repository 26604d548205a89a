-- Sequence gaps of one device counted inside the database, so that ingest updates device_state in one
-- statement without first reading last_seq back. Same rule as gridhub.ingest.store.count_gaps: seqs in
-- arrival order; a step back of more than `reset` starts a new sequence (a device restarting its counter);
-- a number at or below the last is a redelivery or a reordering, not a gap. Returns {new last, gaps}.
CREATE OR REPLACE FUNCTION gridhub_seq_gaps(last_seq bigint, seqs bigint[], reset bigint)
RETURNS bigint[] LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    s bigint;
    gaps bigint := 0;
BEGIN
    FOREACH s IN ARRAY coalesce(seqs, '{}'::bigint[]) LOOP
        IF last_seq IS NULL OR s < last_seq - reset THEN
            last_seq := s;
        ELSIF s > last_seq THEN
            gaps := gaps + s - last_seq - 1;
            last_seq := s;
        END IF;
    END LOOP;
    RETURN ARRAY[last_seq, gaps];
END
$$;
