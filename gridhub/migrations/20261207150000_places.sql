-- Issue 14 (CONTRACT §7): places a grid patrols (units), fire equipment without a sensor (facilities), and where a
-- building stands (WGS-84 degrees, both or neither).
ALTER TABLE buildings ADD COLUMN IF NOT EXISTS lat double precision CHECK (lat IS NULL OR lat BETWEEN -90 AND 90);
ALTER TABLE buildings ADD COLUMN IF NOT EXISTS lon double precision CHECK (lon IS NULL OR lon BETWEEN -180 AND 180);
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'buildings_lat_lon_together') THEN
        ALTER TABLE buildings ADD CONSTRAINT buildings_lat_lon_together CHECK ((lat IS NULL) = (lon IS NULL));
    END IF;
END $$;

CREATE TABLE IF NOT EXISTS units (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    name        text NOT NULL,
    class       text NOT NULL CHECK (class IN ('key', 'general', 'shop', 'major_hazard')),
    grid_id     text NOT NULL REFERENCES grids (id),
    building_id text REFERENCES buildings (id),
    contact     text,
    phone       text
);
CREATE INDEX IF NOT EXISTS units_grid_idx ON units (grid_id);
CREATE INDEX IF NOT EXISTS units_building_idx ON units (building_id);

CREATE TABLE IF NOT EXISTS facilities (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    kind        text NOT NULL CHECK (kind IN ('hydrant', 'extinguisher', 'hose_reel', 'emergency_light', 'fire_door')),
    building_id text NOT NULL REFERENCES buildings (id),
    floor       integer,
    place       text,
    expires     date
);
CREATE INDEX IF NOT EXISTS facilities_building_idx ON facilities (building_id);
CREATE INDEX IF NOT EXISTS facilities_expires_idx ON facilities (expires) WHERE expires IS NOT NULL;
