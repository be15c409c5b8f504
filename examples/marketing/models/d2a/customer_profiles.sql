-- Customers of the app (CleverTap profiles) and of the CRM database, without
-- clear-text personal data. The pipeline's `pii:` policy has already transformed the
-- D1 columns this model reads: email → HMAC hash, phone → masked to the last 4
-- digits, address → encrypted (AES-256-CBC + HMAC-SHA-512, `enc:v3:`).
-- The address rule is classified here, inside the engine, from decrypt(address): the clear
-- address never leaves this query; D2 keeps only the encrypted value and the rule.
-- A ciphertext is bound to the column it was encrypted from, which decrypt() names.
-- CRM customers the CRM deleted (found by the key scan) are left out.
SELECT
  p.customer_id,
  p.source,
  p.identity_hash,
  p.email_hash,
  p.phone_masked,
  p.address_encrypted,
  CASE
    WHEN p.address_encrypted IS NOT NULL AND p.address_clear IS NULL             THEN 'unreadable'
    WHEN p.address_encrypted IS NULL OR p.address_clear = ''                     THEN 'empty'
    WHEN regexp_like(p.address_clear, '^[0-9]{3}-?[0-9]{2}-?[0-9]{4}$') THEN 'ssn_shaped'
    WHEN regexp_like(p.address_clear, '^[0-9]+$')                      THEN 'all_digits'
  END                              AS address_rule,
  p.loaded_at
FROM (
  SELECT
    profile_id                                        AS customer_id,
    'app'                                             AS source,
    hmac_sha256(identity)                             AS identity_hash,
    email                                             AS email_hash,
    phone                                             AS phone_masked,
    address                                           AS address_encrypted,
    trim(decrypt(address, 'app_profiles.address'))    AS address_clear,
    _sluice_loaded_at                                 AS loaded_at
  FROM d1.app_profiles
  UNION ALL
  SELECT
    'crm-' || CAST(customer_id AS VARCHAR),
    'crm',
    hmac_sha256(CAST(customer_id AS VARCHAR)),
    email,
    phone,
    address,
    trim(decrypt(address, 'crm_customers.address')),
    _sluice_loaded_at
  FROM d1.crm_customers
  WHERE _sluice_deleted_at IS NULL
) AS p
