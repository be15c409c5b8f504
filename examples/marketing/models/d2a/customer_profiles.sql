-- CleverTap profiles without clear-text personal data.
-- The pipeline's `pii:` policy has already transformed the D1 columns this model reads:
-- email → HMAC hash, phone → masked to the last 4 digits, address → AES-GCM encrypted.
-- The address rule is classified here, inside the engine, from decrypt(address): the clear
-- address never leaves this query; D2 keeps only the encrypted value and the rule.
-- A ciphertext is bound to the column it was encrypted from, which decrypt() names.
SELECT
  p.profile_id                     AS customer_id,
  hmac_sha256(p.identity)          AS identity_hash,
  p.email                          AS email_hash,
  p.phone                          AS phone_masked,
  p.address                        AS address_encrypted,
  CASE
    WHEN p.address IS NOT NULL AND p.address_clear IS NULL             THEN 'unreadable'
    WHEN p.address IS NULL OR p.address_clear = ''                     THEN 'empty'
    WHEN regexp_like(p.address_clear, '^[0-9]{3}-?[0-9]{2}-?[0-9]{4}$') THEN 'ssn_shaped'
    WHEN regexp_like(p.address_clear, '^[0-9]+$')                      THEN 'all_digits'
  END                              AS address_rule,
  p._sluice_loaded_at              AS loaded_at
FROM (
  SELECT *, trim(decrypt(address, 'app_profiles.address')) AS address_clear
  FROM d1.app_profiles
) AS p
