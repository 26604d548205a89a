-- Issue 13: revocation and separate keys.
-- Which derivation each broker account's password uses (gridhub/accounts.py SCHEMES): the rows that exist when this
-- runs keep 'legacy' (the password their device or app was provisioned with keeps working), every row added later
-- gets 'hkdf'; `gridhub devices rotate` moves the legacy ones and says which devices to re-provision.
-- workers.active (the registry's `active: false`, `registry import --prune`) exists since the registry migration.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS password_scheme text NOT NULL DEFAULT 'legacy'
    CHECK (password_scheme IN ('legacy', 'hkdf'));
ALTER TABLE devices ALTER COLUMN password_scheme SET DEFAULT 'hkdf';
ALTER TABLE workers ADD COLUMN IF NOT EXISTS broker_password_scheme text NOT NULL DEFAULT 'legacy'
    CHECK (broker_password_scheme IN ('legacy', 'hkdf'));
ALTER TABLE workers ALTER COLUMN broker_password_scheme SET DEFAULT 'hkdf';
